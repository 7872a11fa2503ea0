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

    public static OptionSpec Streaming => new("--streaming", "auto|on|off",
        "hold one layer at a time (weights read per layer from the safetensors files; the causal language models). " +
        "auto: on when the weights in the compute dtype exceed half the memory available (MemAvailable, or the memory cgroup's limit less its usage, whichever is smaller)", "auto");

    /// <summary>
    /// --streaming: whether to run layer by layer. auto: on for a layered architecture whose weights in <paramref name="dtype"/>
    /// exceed half of <see cref="MemoryBudget.AvailableBytes"/>; <paramref name="refusal"/> (why this run cannot stream) turns
    /// auto off and makes on an error naming it.
    /// </summary>
    public static bool UseStreaming(ParsedArgs a, string modelDir, torch.ScalarType dtype, string? refusal)
    {
        string choice = a.Choice("--streaming", "auto", "on", "off");
        if (choice == "off") return false;
        var checkpoint = Checkpoint.Open(modelDir);
        if (!checkpoint.Config.Architecture.StreamsLayers)
        {
            if (choice == "on") throw new UsageException($"--streaming on: a {checkpoint.Config.ModelType} model has no layer-wise path (the layered ones: {Architectures.LayeredTypes})");
            return false;
        }
        if (choice == "on")
        {
            if (refusal is not null) throw new UsageException($"--streaming on: {refusal}");
            return true;
        }
        long bytes = LayerStream.StoredParameters(checkpoint) * dtype.ElementSize();
        long available = MemoryBudget.AvailableBytes();
        bool big = bytes > available / 2;
        if (big && refusal is not null)
            ConsoleProgress.Status($"--streaming auto: the weights ({bytes:N0} bytes) exceed half the available memory ({available:N0} bytes), but {refusal}; running in memory");
        else if (big) ConsoleProgress.Status($"--streaming auto: on (the weights, {bytes:N0} bytes in {dtype.ToString().ToLowerInvariant()}, exceed half the available {available:N0} bytes)");
        return big && refusal is null;
    }

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
