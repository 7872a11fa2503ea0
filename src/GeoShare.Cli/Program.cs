using GeoShare;
using GeoShare.Cli;
using GeoShare.Cli.Commands;

NativeAllocator.PreferJemalloc(); // only with GEOSHARE_ALLOCATOR=jemalloc: re-executes this command under jemalloc, for comparisons
return Cli.Run(args);

namespace GeoShare.Cli
{
    /// <summary>The `geoshare` command: dispatch, error reporting and exit codes.</summary>
    public static class Cli
    {
        public static readonly ICommand[] Commands =
        [
            new DemoCommand(),
            new EvalCommand(),
            new AnalyzeCommand(),
            new PlanCommand(),
            new CompressCommand(),
            new ExportCommand(),
            new ImportCommand(),
            new BenchCommand(),
            new VerifyCommand(),
        ];

        public static int Run(string[] args)
        {
            if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
            {
                Console.WriteLine(Usage());
                return args.Length == 0 ? (int)ExitCode.Usage : 0;
            }
            var command = Commands.FirstOrDefault(c => c.Spec.Name == args[0]);
            if (command is null)
            {
                Console.Error.WriteLine($"geoshare: error: unknown command '{BoundedFile.Quote(args[0])}' (commands: {string.Join(", ", Commands.Select(c => c.Spec.Name))})");
                return (int)ExitCode.Usage;
            }
            var rest = args.Skip(1).ToArray();
            if (rest.Contains("--help") || rest.Contains("-h"))
            {
                Console.WriteLine(command.Spec.HelpText());
                return 0;
            }
            InterruptHandler.Install();
            try
            {
                var parsed = command.Spec.Parse(rest);
                return TensorLifetime.InScope(() => command.Execute(parsed));
            }
            catch (OperationCanceledException) when (PartialOutputs.Interrupted)
            {
                return (int)ExitCode.Failure; // the signal handler reports and exits
            }
            catch (GeoShareException e)
            {
                // The library names its parameters; the user knows them as this command's options.
                string message = e is UsageException u ? u.MessageFor(command.Spec.OptionFor) : e.Message;
                Console.Error.WriteLine($"geoshare {args[0]}: error: {BoundedFile.OneLine(message)}");
                return (int)e.Code;
            }
            catch (Exception e) when (Environment.GetEnvironmentVariable("GEOSHARE_DEBUG") != "1")
            {
                Console.Error.WriteLine($"geoshare {args[0]}: internal error: {e.GetType().Name}: {BoundedFile.OneLine(e.Message.Split('\n')[0])} (set GEOSHARE_DEBUG=1 for the trace)");
                return (int)ExitCode.Failure;
            }
        }

        public static string Usage() =>
            "geoshare: cross-layer parameter sharing for trained transformers, chosen by loss curvature\n\n" +
            "Commands:\n" + string.Join("\n", Commands.Select(c => $"  {c.Spec.Name,-10}{c.Spec.Summary}")) +
            "\n\nRun 'geoshare COMMAND --help' for a command's options and examples.";
    }

    /// <summary>
    /// SIGINT/SIGTERM: partial outputs (staging folders, temporary files, lock files) are removed before the process
    /// ends, with the conventional exit code 128 + signal number.
    /// </summary>
    public static class InterruptHandler
    {
        private static readonly List<System.Runtime.InteropServices.PosixSignalRegistration> Registrations = [];

        public static void Install()
        {
            lock (Registrations)
            {
                if (Registrations.Count > 0) return;
                foreach (var (signal, number) in new[] { (System.Runtime.InteropServices.PosixSignal.SIGINT, 2), (System.Runtime.InteropServices.PosixSignal.SIGTERM, 15) })
                    Registrations.Add(System.Runtime.InteropServices.PosixSignalRegistration.Create(signal, context =>
                    {
                        context.Cancel = true;
                        var removed = PartialOutputs.Interrupt();
                        Console.Error.WriteLine($"geoshare: interrupted ({context.Signal}){(removed.Count > 0 ? $"; removed {string.Join(", ", removed)}" : "")}");
                        Environment.Exit(128 + number);
                    }));
            }
        }
    }

    public interface ICommand
    {
        CommandSpec Spec { get; }
        int Execute(ParsedArgs args);
    }
}
