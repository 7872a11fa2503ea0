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

    /// <summary>Refuses an output path that is one of the inputs: inputs are never overwritten.</summary>
    public static void CheckOutputs(ParsedArgs a, IEnumerable<string> outputOptions, IEnumerable<string?> inputs)
    {
        var inputFull = inputs.Where(i => i is not null).Select(i => Path.GetFullPath(i!)).ToList();
        foreach (var opt in outputOptions)
        {
            if (a.String(opt) is not { } outPath) continue;
            string full = Path.GetFullPath(outPath);
            if (inputFull.Any(i => i == full || (Directory.Exists(i) && full.StartsWith(i + Path.DirectorySeparatorChar) && opt != "--out")))
                throw new UsageException($"{opt} {outPath} would overwrite an input");
            if (Directory.Exists(full) && opt == "--json") throw new UsageException($"{opt} {outPath} is a folder");
        }
    }

    public static string Fmt(double v, string format = "0.0000") => v.ToString(format, System.Globalization.CultureInfo.InvariantCulture);
}
