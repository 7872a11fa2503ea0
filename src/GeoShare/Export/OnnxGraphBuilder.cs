using Google.Protobuf;
using GeoShare.Models;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Export;

/// <summary>
/// Builds one ONNX graph with the classes generated from ONNX's schema (Export/onnx.proto): nodes, small constants, and
/// the model's tensors as initializers. A tensor that several modules hold (a shared basis, a tied matrix, a tied
/// embedding) becomes one initializer, found by its storage. Weights are stored in <see cref="StoredDType"/> and, when
/// that is not float32, cast to float32 in the graph: the graph computes in float32, as GeoShare's eval does.
/// </summary>
public sealed class OnnxGraphBuilder
{
    private readonly GraphProto _graph = new() { Name = "geoshare" };
    private readonly Dictionary<(IntPtr, string), string> _initializerOf = new();
    private readonly Dictionary<string, string> _float32Of = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _uses = new(StringComparer.Ordinal);
    private int _counter;

    public OnnxGraphBuilder(int opset, ScalarType storedDType)
    {
        Opset = opset;
        StoredDType = storedDType;
    }

    public int Opset { get; }

    /// <summary>The longest sequence the graph takes (a learned position table's rows: GPT-2), set by graphs that have one.</summary>
    public int? MaxSequence { get; set; }
    public ScalarType StoredDType { get; }
    public GraphProto Graph => _graph;

    /// <summary>Bytes of the model tensors stored (constants of the graph itself not counted).</summary>
    public long WeightBytes { get; private set; }
    public long WeightElements { get; private set; }

    /// <summary>Model tensors that more than one module reads (shared bases, tied matrices, a tied embedding).</summary>
    public int SharedWeights => _uses.Count(u => u.Value > 1);

    /// <summary>
    /// Names to give tensors instead of their first holder's (e.g. a compressed checkpoint's names of its shared bases),
    /// keyed by storage.
    /// </summary>
    public Dictionary<IntPtr, string> PreferredNames { get; } = new();

    /// <summary>Names of the initializers that hold model tensors, in the order added.</summary>
    public List<string> WeightInitializers { get; } = [];

    private string Fresh(string stem)
    {
        string name = $"{stem}_{_counter++}";
        _names.Add(name);
        return name;
    }

    // ---- inputs and outputs ----

    /// <summary>A graph input or output: dims are fixed sizes or symbolic names (dynamic axes).</summary>
    public static ValueInfoProto Value(string name, TensorProto.Types.DataType type, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is string s ? new TensorShapeProto.Types.Dimension { DimParam = s } : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(d) });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
    }

    public void Input(ValueInfoProto v) { _names.Add(v.Name); _graph.Input.Add(v); }
    public void Output(ValueInfoProto v) => _graph.Output.Add(v);

    // ---- model tensors ----

    /// <summary>
    /// The float32 value of a model tensor: its initializer (added once per storage, named <paramref name="name"/> the
    /// first time), cast to float32 when stored in another dtype.
    /// </summary>
    public string Weight(Tensor t, string name) => Store(t, name, StoredDType);

    /// <summary>A constant the model computes in float32 (rotary inv_freq): stored in float32 whatever the weights' dtype.</summary>
    public string Table(Tensor t, string name) => Store(t, name, ScalarType.Float32);

    private string Store(Tensor t, string name, ScalarType dtype)
    {
        var key = (TensorStorage.Pointer(t), string.Join(",", t.shape) + "@" + t.storage_offset());
        if (!_initializerOf.TryGetValue(key, out var init))
        {
            if (PreferredNames.TryGetValue(key.Item1, out var preferred)) name = preferred;
            if (!_names.Add(name)) throw new ArgumentException($"two different tensors are both named '{name}'");
            using var f32 = t.detach().to_type(ScalarType.Float32).contiguous();
            var proto = new TensorProto { Name = name, DataType = (int)OnnxDType(dtype), RawData = ByteString.CopyFrom(Bytes(f32.data<float>().ToArray(), dtype)) };
            proto.Dims.AddRange(t.shape);
            _graph.Initializer.Add(proto);
            WeightInitializers.Add(name);
            WeightBytes += proto.RawData.Length;
            WeightElements += t.numel();
            _initializerOf[key] = init = name;
        }
        _uses[init] = _uses.GetValueOrDefault(init) + 1;
        if (dtype == ScalarType.Float32) return init;
        if (!_float32Of.TryGetValue(init, out var cast))
            _float32Of[init] = cast = Node("Cast", [init], [Attr("to", (long)TensorProto.Types.DataType.Float)], init + "_f32");
        return cast;
    }

    /// <summary>Little-endian bytes of float32 values in <paramref name="dtype"/>, rounded to nearest even as libtorch rounds.</summary>
    private static byte[] Bytes(float[] values, ScalarType dtype)
    {
        switch (dtype)
        {
            case ScalarType.Float32: return AsBytes(values);
            case ScalarType.Float16: return AsBytes(Array.ConvertAll(values, v => (Half)v));
            case ScalarType.BFloat16:
                return AsBytes(Array.ConvertAll(values, v =>
                {
                    uint bits = BitConverter.SingleToUInt32Bits(v);
                    if (float.IsNaN(v)) return (ushort)((bits >> 16) | 0x40);
                    return (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
                }));
            default: throw new ArgumentException($"no ONNX storage for {dtype}");
        }
    }

    private static byte[] AsBytes<T>(T[] values) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    public static TensorProto.Types.DataType OnnxDType(ScalarType t) => t switch
    {
        ScalarType.Float32 => TensorProto.Types.DataType.Float,
        ScalarType.Float16 => TensorProto.Types.DataType.Float16,
        ScalarType.BFloat16 => TensorProto.Types.DataType.Bfloat16,
        ScalarType.Int64 => TensorProto.Types.DataType.Int64,
        _ => throw new ArgumentException($"no ONNX type for {t}"),
    };

    // ---- constants ----

    public string Ints(params long[] values) => IntTensor(values, [values.Length]);

    /// <summary>A 0-d int64 constant (Range's and Gather's scalar operands).</summary>
    public string Scalar(long value) => IntTensor([value], []);

    private string IntTensor(long[] values, long[] dims)
    {
        var proto = new TensorProto { Name = Fresh("const"), DataType = (int)TensorProto.Types.DataType.Int64 };
        proto.Dims.AddRange(dims);
        proto.Int64Data.AddRange(values);
        _graph.Initializer.Add(proto);
        return proto.Name;
    }

    public string Float(float value)
    {
        var proto = new TensorProto { Name = Fresh("const"), DataType = (int)TensorProto.Types.DataType.Float };
        proto.FloatData.Add(value);
        _graph.Initializer.Add(proto);
        return proto.Name;
    }

    // ---- nodes ----

    public static AttributeProto Attr(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };
    public static AttributeProto Attr(string name, float value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };
    public static AttributeProto Attr(string name, long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }
    public static AttributeProto Attr(string name, TensorProto value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Tensor, T = value };

    /// <summary>Adds a node with one output and returns the output's name.</summary>
    public string Node(string op, string[] inputs, AttributeProto[]? attributes = null, string? output = null)
    {
        output = output is null ? Fresh(op.ToLowerInvariant()) : (_names.Add(output) ? output : Fresh(output));
        var node = new NodeProto { OpType = op, Name = output + "_node" };
        node.Input.AddRange(inputs);
        node.Output.Add(output);
        if (attributes is not null) node.Attribute.AddRange(attributes);
        _graph.Node.Add(node);
        return output;
    }

    public string Add(string a, string b) => Node("Add", [a, b]);
    public string Mul(string a, string b) => Node("Mul", [a, b]);
    public string Reshape(string x, string shape) => Node("Reshape", [x, shape]);
    public string Transpose(string x, params long[] perm) => Node("Transpose", [x], [Attr("perm", perm)]);
    public string Concat(long axis, params string[] xs) => Node("Concat", xs, [Attr("axis", axis)]);

    /// <summary>x[..., start:end] along <paramref name="axis"/> (end may be long.MaxValue).</summary>
    public string Slice(string x, long axis, long start, long end) => Node("Slice", [x, Ints(start), Ints(end), Ints(axis)]);

    /// <summary>Mean over the last axis, kept: ReduceMean takes its axes as an attribute up to opset 17 and as an input from 18.</summary>
    public string MeanLastAxis(string x) => Opset >= 18
        ? Node("ReduceMean", [x, Ints(-1)], [Attr("keepdims", 1L)])
        : Node("ReduceMean", [x], [Attr("axes", new long[] { -1 }), Attr("keepdims", 1L)]);

    // ---- layers ----

    /// <summary>
    /// y = x W + b for a projection of any storage, x of shape [N, in]: a dense matrix in either layout (Gemm, transposed
    /// for [out, in]), or a shared basis with this layer's coefficients (x·basis, then Gemm with the coefficients).
    /// </summary>
    public string Linear(string x, LinearMap map, string name)
    {
        string? bias = map.Bias is { } b ? Weight(b, name + ".bias") : null;
        switch (map)
        {
            case DenseLinear d:
            {
                // A tied matrix's first holder names it; a shared matrix gets one name for all its layers.
                string w = Weight(d.Weight, name + ".weight");
                long transB = d.Layout == WeightLayout.OutIn ? 1 : 0;
                return Node("Gemm", bias is null ? [x, w] : [x, w, bias], [Attr("transB", transB)]);
            }
            case SharedBasisLinear s:
            {
                string basis = Weight(s.Basis, name + ".basis");
                string coeff = Weight(s.Coefficients, name + ".coeff");
                var h = Node("MatMul", [x, basis]);
                return Node("Gemm", bias is null ? [h, coeff] : [h, coeff, bias]);
            }
            default:
                throw new UsageException("model", $"{name}: a {map.GetType().Name} projection has no ONNX form in the exporter");
        }
    }

    public string LayerNorm(string x, Tensor weight, Tensor bias, double eps, string name) =>
        Node("LayerNormalization", [x, Weight(weight, name + ".weight"), Weight(bias, name + ".bias")], [Attr("axis", -1L), Attr("epsilon", (float)eps)]);

    /// <summary>RMSNorm as GeoShare computes it: x · rsqrt(mean(x²) + eps) · weight.</summary>
    public string RmsNorm(string x, Tensor weight, double eps, string name)
    {
        var meanSquare = MeanLastAxis(Mul(x, x));
        var inv = Node("Reciprocal", [Node("Sqrt", [Add(meanSquare, Float((float)eps))])]);
        return Mul(Mul(x, inv), Weight(weight, name + ".weight"));
    }

    /// <summary>The activations of <see cref="Activations"/>, by their Hugging Face names, written out as GeoShare computes them.</summary>
    public string Activation(string activation, string x)
    {
        switch (activation)
        {
            case "gelu_new":
            {
                // x · sigmoid(2·√(2/π)·(x + 0.044715·x³)), GeoShare's form of the tanh approximation.
                var cube = Mul(Mul(x, x), x);
                var inner = Add(x, Mul(cube, Float(0.044715f)));
                return Mul(x, Node("Sigmoid", [Mul(inner, Float((float)(2 * Math.Sqrt(2.0 / Math.PI))))]));
            }
            case "gelu":
            {
                var erf = Node("Erf", [Mul(x, Float((float)(1 / Math.Sqrt(2))))]);
                return Mul(Mul(x, Float(0.5f)), Add(erf, Float(1f)));
            }
            case "relu": return Node("Relu", [x]);
            case "silu": return Mul(x, Node("Sigmoid", [x]));
            default: throw new UsageException("model", $"activation '{activation}' has no ONNX form in the exporter");
        }
    }

    /// <summary>
    /// The additive mask [T, T] of causal attention, for a 1-element int64 T: -inf where key j is after query i
    /// (j &gt; i) and, with a sliding <paramref name="window"/>, where it is window or more behind (i − j ≥ window), as
    /// GeoShare's attention masks them; 0 where query i sees key j (0 ≤ i − j &lt; window). The two -inf regions are
    /// disjoint; when T ≤ window the second is empty (Trilu's k = −window selects nothing) and the mask is the causal one.
    /// </summary>
    public string CausalMask(string t, int? window = null)
    {
        if (window is <= 0) throw new ArgumentException($"a sliding window must be positive, got {window}");
        var minusInf = new TensorProto { DataType = (int)TensorProto.Types.DataType.Float, Dims = { 1 } };
        minusInf.FloatData.Add(float.NegativeInfinity);
        var full = Node("ConstantOfShape", [Concat(0, t, t)], [Attr("value", minusInf)]);
        var future = Node("Trilu", [full, Scalar(1)], [Attr("upper", 1L)]);
        if (window is not int w) return future;
        var past = Node("Trilu", [full, Scalar(-w)], [Attr("upper", 0L)]);
        return Add(future, past);
    }

    /// <summary>
    /// Scaled dot-product attention of heads laid out [B, heads, T, headDim]; <paramref name="mask"/> (added to the
    /// scores) is null for bidirectional attention.
    /// </summary>
    public string Attention(string q, string k, string v, int headDim, string? mask)
    {
        var scores = Mul(Node("MatMul", [q, Transpose(k, 0, 1, 3, 2)]), Float((float)(1 / Math.Sqrt(headDim))));
        if (mask is not null) scores = Add(scores, mask);
        return Node("MatMul", [Node("Softmax", [scores], [Attr("axis", -1L)]), v]);
    }

    /// <summary>[N, heads·headDim] → [B, heads, T, headDim]; <paramref name="bt"/> is the 2-element int64 [B, T].</summary>
    public string SplitHeads(string x, string bt, int heads, int headDim) =>
        Transpose(Reshape(x, Concat(0, bt, Ints(heads, headDim))), 0, 2, 1, 3);

    /// <summary>[B, heads, T, headDim] → [N, heads·headDim].</summary>
    public string MergeHeads(string x, int heads, int headDim) =>
        Reshape(Transpose(x, 0, 2, 1, 3), Ints(-1, (long)heads * headDim));

    /// <summary>Grouped-query attention: key/value head h serves query heads h·g … h·g + g − 1 (transformers' repeat_kv).</summary>
    public string RepeatKv(string x, string bt, int kvHeads, int groups, int headDim)
    {
        if (groups == 1) return x;
        // [B, kv, T, d] → [B, kv, 1, T, d] → expand to [B, kv, g, T, d] → [B, kv·g, T, d]
        var expanded = Node("Expand", [Node("Unsqueeze", [x, Ints(2)]), Ints(1, 1, groups, 1, 1)]);
        var b = Slice(bt, 0, 0, 1);
        var t = Slice(bt, 0, 1, 2);
        return Reshape(expanded, Concat(0, b, Ints((long)kvHeads * groups), t, Ints(headDim)));
    }
}
