using System.Diagnostics;
using Google.Protobuf;
using GeoShare.Models;
using GeoShare.Sharing;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Export;

/// <summary>What <see cref="OnnxExporter.Export"/> writes: the opset, the weights' dtype, and when weights go to an external file.</summary>
public sealed record OnnxExportOptions
{
    public const int MinOpset = 17, MaxOpset = 21;

    /// <summary>ONNX opset, 17 (LayerNormalization's first) to 21; 17 is what Debian's onnx 1.12 checks.</summary>
    public int Opset { get; init; } = MinOpset;

    /// <summary>Dtype of the stored weights (float32, float16, bfloat16); null keeps the checkpoint's.</summary>
    public ScalarType? SaveDType { get; init; }

    /// <summary>Weights beyond this many bytes go to OUT.onnx.data beside the file (protobuf cannot hold a message over 2 GB).</summary>
    public long ExternalDataThreshold { get; init; } = OnnxExporter.ProtobufLimit;

    public static readonly ScalarType[] SaveDTypes = [ScalarType.Float32, ScalarType.Float16, ScalarType.BFloat16];

    public void Validate()
    {
        if (Opset < MinOpset || Opset > MaxOpset)
            throw new UsageException("opset", $"{Opset} is not written (the exporter writes opsets {MinOpset}..{MaxOpset}; LayerNormalization needs {MinOpset})");
        if (SaveDType is { } t && !SaveDTypes.Contains(t))
            throw new UsageException("save_dtype", $"{t.ToString().ToLowerInvariant()} is not written (float32, float16 or bfloat16)");
        if (ExternalDataThreshold < 0 || ExternalDataThreshold > OnnxExporter.ProtobufLimit)
            throw new UsageException("external_data_threshold", $"must be within 0..{OnnxExporter.ProtobufLimit} bytes (protobuf's limit)");
    }
}

/// <summary>`geoshare export --json`: the file written, its size beside the model's parameter bytes, and how it stores the weights.</summary>
public sealed record ExportOutput
{
    public string Command { get; init; } = "export";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required bool Compressed { get; init; }
    public required string Onnx { get; init; }
    /// <summary>The external-data file beside it, or null when the weights are inside.</summary>
    public string? ExternalData { get; init; }
    public required int Opset { get; init; }
    public required string Dtype { get; init; }
    public required long Parameters { get; init; }
    /// <summary>The model's distinct parameters in the stored dtype (each shared tensor once).</summary>
    public required long ParameterBytes { get; init; }
    /// <summary>The ONNX file plus its external data.</summary>
    public required long FileBytes { get; init; }
    /// <summary>FileBytes / ParameterBytes − 1.</summary>
    public required double SizeOverhead { get; init; }
    public required int Initializers { get; init; }
    /// <summary>Initializers that more than one module reads: shared bases, tied matrices, a tied embedding.</summary>
    public required int SharedInitializers { get; init; }
    public required int Nodes { get; init; }
    public required double WallSeconds { get; init; }
}

/// <summary>
/// Writes a dense or GeoShare-compressed model folder as one ONNX model: <c>input_ids</c> (int64 [batch, sequence]) →
/// <c>logits</c> for language models, <c>pixel_values</c> → <c>logits</c> for image classifiers. Each shared basis and
/// each tied matrix is one initializer; every other tensor keeps its own.
/// </summary>
public static class OnnxExporter
{
    public const long ProtobufLimit = 2L << 30;
    public const string FormatTag = "geoshare-onnx/1";

    /// <summary>metadata_props keys: what the ONNX evaluation needs that the graph does not hold.</summary>
    public const string ConfigKey = "geoshare.config", SourceKey = "geoshare.source", FormatKey = "geoshare.format",
        ParametersKey = "geoshare.parameters", ParameterBytesKey = "geoshare.parameter_bytes", DtypeKey = "geoshare.dtype",
        MaxSequenceKey = "geoshare.max_sequence";

    public static ExportOutput Export(string modelDir, string onnxPath, OnnxExportOptions? options = null)
    {
        options ??= new OnnxExportOptions();
        options.Validate();
        var sw = Stopwatch.StartNew();
        var stored = options.SaveDType ?? CheckpointDType(modelDir);
        using var scope = torch.NewDisposeScope();
        var model = ModelFolder.Load(modelDir, ScalarType.Float32);
        var plan = CompressedCheckpoint.IsCompressed(modelDir) ? SharingPlan.Load(Path.Combine(modelDir, CompressedCheckpoint.PlanFile)) : null;
        var (proto, g) = Build(model, stored, options.Opset, Path.GetFullPath(modelDir), plan);
        var (fileBytes, external) = WriteFile(proto, onnxPath, options.ExternalDataThreshold);
        long parameterBytes = model.ParameterCount() * stored.ElementSize();
        return new ExportOutput
        {
            Model = modelDir, ModelType = model.Config.ModelType, Compressed = CompressedCheckpoint.IsCompressed(modelDir),
            Onnx = onnxPath, ExternalData = external, Opset = options.Opset, Dtype = DTypeName(stored),
            Parameters = model.ParameterCount(), ParameterBytes = parameterBytes, FileBytes = fileBytes,
            SizeOverhead = (double)fileBytes / parameterBytes - 1, Initializers = proto.Graph.Initializer.Count,
            SharedInitializers = g.SharedWeights, Nodes = proto.Graph.Node.Count, WallSeconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// Writes <paramref name="proto"/> to <paramref name="onnxPath"/> atomically (a temporary name, then renamed). Weights
    /// over <paramref name="externalThreshold"/> bytes in all go to OUT.onnx.data beside it, each at a 4 KiB-aligned offset
    /// (mappable), written and renamed first; if the model file then fails, the data file is removed again.
    /// Returns the bytes written and the data file's name (null when none).
    /// </summary>
    public static (long Bytes, string? ExternalData) WriteFile(ModelProto proto, string onnxPath, long externalThreshold = ProtobufLimit, int externalMinBytes = ExternalMinBytes)
    {
        string full = Path.GetFullPath(onnxPath);
        long weights = proto.Graph.Initializer.Sum(i => (long)i.RawData.Length);
        string? dataPath = null;
        long dataBytes = 0;
        if (weights > externalThreshold)
        {
            dataPath = full + ".data";
            string location = Path.GetFileName(dataPath);
            AtomicFile.Write(dataPath, stream =>
            {
                foreach (var init in proto.Graph.Initializer.Where(i => i.RawData.Length > 0 && i.RawData.Length >= externalMinBytes))
                {
                    long pad = (4096 - stream.Position % 4096) % 4096;
                    stream.Write(new byte[pad]);
                    long offset = stream.Position;
                    init.RawData.WriteTo(stream);
                    init.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
                    init.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                    init.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = init.RawData.Length.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                    init.DataLocation = TensorProto.Types.DataLocation.External;
                    init.ClearRawData();
                }
                dataBytes = stream.Position;
            });
        }
        try
        {
            AtomicFile.Write(full, stream => proto.WriteTo(stream));
        }
        catch
        {
            if (dataPath is not null && File.Exists(dataPath)) File.Delete(dataPath);
            throw;
        }
        return (new FileInfo(full).Length + dataBytes, dataPath is null ? null : Path.GetFileName(dataPath));
    }

    /// <summary>Initializers smaller than this stay inside the model file when the rest go external.</summary>
    public const int ExternalMinBytes = 1024;

    /// <summary>The dtype most of the checkpoint's tensors have; a float64 one needs an explicit --save-dtype.</summary>
    private static ScalarType CheckpointDType(string dir)
    {
        var checkpoint = Checkpoint.Open(dir);
        string dtype = checkpoint.TensorNames.GroupBy(n => checkpoint.Entry(n).DType).OrderByDescending(g => g.Count()).First().Key;
        return dtype switch
        {
            "F32" => ScalarType.Float32,
            "F16" => ScalarType.Float16,
            "BF16" => ScalarType.BFloat16,
            _ => throw new UsageException("save_dtype", $"{dir} stores {dtype} weights, which the exporter does not keep: choose float32, float16 or bfloat16"),
        };
    }

    /// <summary>The ONNX model of <paramref name="model"/> (in memory, weights inside).</summary>
    /// <param name="plan">the compressed model's plan: its shared bases and tied matrices get the checkpoint's names.</param>
    public static (ModelProto Proto, OnnxGraphBuilder Builder) Build(PretrainedModel model, ScalarType stored, int opset, string? source = null, SharingPlan? plan = null)
    {
        var graph = ArchitectureGraphs.For(model.Architecture)
            ?? throw new UsageException("model", $"model_type '{model.Config.ModelType}' has no ONNX graph in the exporter (it writes: {string.Join(", ", ArchitectureGraphs.All.Select(g => g.Architecture.ModelType))})");
        var g = new OnnxGraphBuilder(opset, stored);
        if (plan is not null) NameSharedTensors(model, plan, g);
        using (torch.no_grad()) graph.Build(model, g);
        var proto = new ModelProto
        {
            IrVersion = opset <= 18 ? 8 : opset <= 20 ? 9 : 10,
            ProducerName = "geoshare",
            ProducerVersion = "1",
            Graph = g.Graph,
        };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        void Meta(string key, string value) => proto.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        Meta(FormatKey, FormatTag);
        Meta(ConfigKey, model.Config.RawJson);
        Meta(ParametersKey, model.ParameterCount().ToString(System.Globalization.CultureInfo.InvariantCulture));
        Meta(ParameterBytesKey, (model.ParameterCount() * stored.ElementSize()).ToString(System.Globalization.CultureInfo.InvariantCulture));
        Meta(DtypeKey, DTypeName(stored));
        if (source is not null) Meta(SourceKey, source);
        if (g.MaxSequence is int max) Meta(MaxSequenceKey, max.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return (proto, g);
    }

    private static void NameSharedTensors(PretrainedModel model, SharingPlan plan, OnnxGraphBuilder g)
    {
        foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
        {
            var groups = tp.Groups();
            for (int c = 0; c < groups.Count; c++)
                switch (model.GetProjection(model.Site(type, groups[c][0])))
                {
                    case SharedBasisLinear s: g.PreferredNames[TensorStorage.Pointer(s.Basis)] = CompressedCheckpoint.SharedName(type, c, "basis"); break;
                    case DenseLinear d: g.PreferredNames[TensorStorage.Pointer(d.Weight)] = CompressedCheckpoint.SharedName(type, c, "weight"); break;
                }
        }
    }

    public static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        _ => t.ToString().ToLowerInvariant(),
    };

    public static ScalarType ParseDType(string name) => name switch
    {
        "float32" => ScalarType.Float32,
        "float16" => ScalarType.Float16,
        "bfloat16" => ScalarType.BFloat16,
        _ => throw new UsageException("save_dtype", $"'{name}' is not written (float32, float16 or bfloat16)"),
    };
}
