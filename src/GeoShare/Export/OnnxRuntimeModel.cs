using System.Globalization;
using GeoShare.Models;
using Microsoft.ML.OnnxRuntime;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Export;

/// <summary>
/// A file written by <see cref="OnnxExporter"/>, opened in ONNX Runtime (CPU): its forward pass as a function from the
/// input tensor to logits, for <see cref="Evaluation.Evaluator"/>'s protocols, and what the file records about its model.
/// </summary>
public sealed class OnnxRuntimeModel : IDisposable
{
    private readonly InferenceSession _session;
    private readonly string _input;

    public string Path { get; }
    public ModelConfig Config { get; }
    public long Parameters { get; }
    public long ParameterBytes { get; }
    /// <summary>The dtype the weights are stored in.</summary>
    public string Dtype { get; }
    /// <summary>The folder the file was exported from (tokenizer, preprocessor), as recorded at export; null if not recorded.</summary>
    public string? SourceFolder { get; }
    public int Threads { get; }
    /// <summary>The longest sequence the graph's learned position table covers (GPT-2); null for rotary decoders and image models.</summary>
    public int? MaxSequence { get; }

    private OnnxRuntimeModel(InferenceSession session, string path, int threads)
    {
        _session = session;
        Path = path;
        Threads = threads;
        var meta = session.ModelMetadata.CustomMetadataMap;
        string Meta(string key) => meta.TryGetValue(key, out var v) ? v
            : throw BadInputException.For(path, $"no '{key}' in its metadata (not written by geoshare export)");
        if (Meta(OnnxExporter.FormatKey) != OnnxExporter.FormatTag)
            throw BadInputException.For(path, $"format '{meta[OnnxExporter.FormatKey]}', expected '{OnnxExporter.FormatTag}'");
        Config = ModelConfig.Parse(Meta(OnnxExporter.ConfigKey), path + " (metadata " + OnnxExporter.ConfigKey + ")");
        Parameters = long.Parse(Meta(OnnxExporter.ParametersKey), CultureInfo.InvariantCulture);
        ParameterBytes = long.Parse(Meta(OnnxExporter.ParameterBytesKey), CultureInfo.InvariantCulture);
        Dtype = Meta(OnnxExporter.DtypeKey);
        SourceFolder = meta.TryGetValue(OnnxExporter.SourceKey, out var s) ? s : null;
        MaxSequence = meta.TryGetValue(OnnxExporter.MaxSequenceKey, out var m) ? int.Parse(m, CultureInfo.InvariantCulture) : null;
        _input = session.InputMetadata.Keys.Single();
    }

    /// <param name="threads">intra-op threads (ONNX Runtime's own pool); inter-op work runs sequentially.</param>
    public static OnnxRuntimeModel Open(string path, int threads)
    {
        if (Directory.Exists(path)) throw BadInputException.For(path, "a folder; the ONNX runtime evaluates a file written by geoshare export");
        if (!File.Exists(path)) throw BadInputException.For(path, "ONNX file not found");
        var options = new SessionOptions
        {
            IntraOpNumThreads = threads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
        };
        InferenceSession session;
        try { session = new InferenceSession(path, options); }
        catch (OnnxRuntimeException e) { throw BadInputException.For(path, $"ONNX Runtime cannot load it ({e.Message.Split('\n')[0]})"); }
        finally { options.Dispose(); }
        try { return new OnnxRuntimeModel(session, path, threads); }
        catch { session.Dispose(); throw; }
    }

    public ModelTask Task => Config.Architecture.Task;

    /// <summary>
    /// Logits for a batch: int64 ids [B, T] → [B, T, vocab], or float32 pixels [B, C, H, W] → [B, labels]. The input is
    /// copied in and the logits out (ONNX Runtime and libtorch do not share buffers here).
    /// </summary>
    public Tensor Forward(Tensor input)
    {
        // The graph's position table ends there; ONNX Runtime would fail on a broadcast deep inside instead.
        if (MaxSequence is int max && input.dim() == 2 && input.shape[1] > max)
            throw new UsageException($"sequences of {input.shape[1]} tokens exceed the {max} positions {Path} was exported with");
        using var cpu = input.contiguous();
        using var value = cpu.dtype switch
        {
            ScalarType.Int64 => OrtValue.CreateTensorValueFromMemory(cpu.data<long>().ToArray(), cpu.shape),
            ScalarType.Float32 => OrtValue.CreateTensorValueFromMemory(cpu.data<float>().ToArray(), cpu.shape),
            _ => throw new ArgumentException($"an ONNX input of {cpu.dtype} is not supported"),
        };
        using var runOptions = new RunOptions();
        using var outputs = _session.Run(runOptions, [_input], [value], ["logits"]);
        var output = outputs[0];
        long[] shape = output.GetTensorTypeAndShape().Shape;
        return torch.tensor(output.GetTensorDataAsSpan<float>().ToArray(), shape);
    }

    public void Dispose() => _session.Dispose();
}
