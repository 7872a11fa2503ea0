using GeoShare.Models;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>Options and checks that several commands share.</summary>
public static class CommonOptions
{
    public static OptionSpec Model => new("--model", "DIR", "Hugging Face model folder (config.json + safetensors), or a GeoShare compressed folder", Required: true);
    public static OptionSpec Json => new("--json", "PATH", "also write the results as JSON to PATH");
    public static OptionSpec Threads => new("--threads", "N", "CPU threads for tensor work", DefaultNote: "all cores");
    public static OptionSpec Seed => new("--seed", "N", "random seed", "0");

    public static void ApplyThreads(ParsedArgs a)
    {
        if (a.Has("--threads")) torch.set_num_threads(a.Int("--threads", min: 1));
    }

    /// <summary>
    /// Refuses, before any work, output paths that would overwrite or land in an input or another output (see
    /// <see cref="OutputPaths"/>). --json is a file and --plots a folder of pictures in every command.
    /// </summary>
    public static void CheckOutputs(ParsedArgs a, IEnumerable<string> inputOptions, params (string Option, OutputKind Kind)[] outputs) =>
        OutputPaths.Check(a, [("--json", OutputKind.File), ("--plots", OutputKind.FilesIn), .. outputs], inputOptions.Where(a.Defines).Select(o => (o, a.String(o))));

    public static string Fmt(double v, string format = "0.0000") => v.ToString(format, System.Globalization.CultureInfo.InvariantCulture);
}
