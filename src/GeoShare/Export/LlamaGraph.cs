using GeoShare.Models;
using Onnx;
using static GeoShare.Export.OnnxGraphBuilder;

namespace GeoShare.Export;

/// <summary>
/// The LLaMA-style decoders as ONNX (llama, mistral, qwen2, qwen3: every family built on <see cref="LlamaDecoderSpec"/>):
/// RMSNorm, rotary positions, grouped-query attention, SwiGLU, with what the family's spec adds: biases (they come with
/// the projections: Qwen2's q/k/v, attention_bias and mlp_bias), q_norm/k_norm over head_dim before the rotation
/// (Qwen3), a sliding-window causal mask (Mistral). One graph for the families, as Models has one decoder; each family
/// is registered by its descriptor (<see cref="Families"/>). The rotary cos/sin are computed in the graph as the model
/// computes them (<see cref="RotaryEmbedding.CosSin"/>): only inv_freq is stored (float32, [head_dim/2], from the
/// family's rope parameters by <see cref="RotaryParameters.InverseFrequencies"/>: default, linear, llama3 scaling), the
/// positions 0..T−1 come from the input's shape, so the graph takes any sequence length, as the model does
/// (max_position_embeddings is advisory there too; it stays in the file's config metadata).
/// </summary>
public sealed class LlamaGraph(Architecture architecture) : ArchitectureGraph
{
    /// <summary>The families this graph writes, one per descriptor in the registry.</summary>
    public static IReadOnlyList<LlamaGraph> Families { get; } =
    [
        new(LlamaArchitecture.Instance),
        new(MistralArchitecture.Instance),
        new(Qwen2Architecture.Instance),
        new(Qwen3Architecture.Instance),
    ];

    public override Architecture Architecture => architecture;

    public override void Build(PretrainedModel model, OnnxGraphBuilder g)
    {
        var c = (LlamaFamilyConfig)model.Config;
        var s = c.Decoder;
        // Every field of the spec is written: these and the rope here; the intermediate size, tying and the biases by the
        // tensors and projections the model holds; heads and q/k norms in Layer. A new field fails to compile here.
        var (vocab, hidden, _, layers, _, _, headDim, eps, _, _, _, _, _, _, window) = s;
        var ps = model.ParametersByName();

        g.Input(Value("input_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        var bt = g.Node("Shape", ["input_ids"]);
        var t = g.Slice(bt, 0, 1, 2);
        var embed = g.Weight(Param(model, ps, LlamaFamilyLayout.EmbeddingPrefix + ".weight"), LlamaFamilyLayout.EmbeddingPrefix + ".weight");
        var x = g.Reshape(g.Node("Gather", [embed, "input_ids"]), g.Ints(-1, hidden));

        // The model's rotary tables, computed in the graph with the model's operations: positions arange(T) in int64 cast
        // to float32, times inv_freq (one float32 multiply per element, torch.outer's), so the angles are the model's
        // bit for bit; cos and sin of those [T, head_dim/2] angles (the runtime's Cos/Sin, which may differ from libtorch's
        // in the last bit), then cat(·, ·) along the last axis as the model's cat(freqs, freqs) lays them out (an
        // elementwise function commutes with the concatenation). rotate_half is the model's too (ApplyRotary).
        int half = headDim / 2;
        string invFreq;
        using (var inv = s.Rope.InverseFrequencies(headDim)) invFreq = g.Table(inv, "rotary.inv_freq");
        var positions = g.Node("Cast", [g.Node("Range", [g.Scalar(0), g.Node("Gather", [bt, g.Scalar(1)]), g.Scalar(1)])],
            [Attr("to", (long)TensorProto.Types.DataType.Float)]);
        var freqs = g.Mul(g.Node("Unsqueeze", [positions, g.Ints(1)]), invFreq);  // [T, 1] × [half] → [T, half]
        string Rotary(string op) { var values = g.Node(op, [freqs]); return g.Concat(-1, values, values); }
        var rope = new Rope(Rotary("Cos"), Rotary("Sin"), half);
        var mask = g.CausalMask(t, window);

        for (int l = 0; l < layers; l++)
        {
            string p = c.Architecture.LayerPrefix(l);
            var h = g.RmsNorm(x, Param(model, ps, p + ".input_layernorm.weight"), eps, p + ".input_layernorm");
            x = g.Add(x, Layer(g, model, s, ps, p, h, bt, rope, mask));
            h = g.RmsNorm(x, Param(model, ps, p + ".post_attention_layernorm.weight"), eps, p + ".post_attention_layernorm");
            var gate = g.Activation("silu", Project(g, model, h, p, "mlp.gate_proj"));
            x = g.Add(x, Project(g, model, g.Mul(gate, Project(g, model, h, p, "mlp.up_proj")), p, "mlp.down_proj"));
        }
        x = g.RmsNorm(x, Param(model, ps, "model.norm.weight"), eps, "model.norm");
        var head = g.Weight(Param(model, ps, LlamaFamilyLayout.HeadPrefix + ".weight"), LlamaFamilyLayout.HeadPrefix + ".weight");
        var logits = g.Node("Gemm", [x, head], [Attr("transB", 1L)]);
        g.Node("Reshape", [logits, g.Concat(0, bt, g.Ints(vocab))], output: "logits");
        g.Output(Value("logits", TensorProto.Types.DataType.Float, "batch", "sequence", vocab));
    }

    /// <summary>cos and sin [T, headDim] for the current sequence.</summary>
    private sealed record Rope(string Cos, string Sin, int Half);

    /// <summary>
    /// One layer's self-attention on the normed input <paramref name="h"/> [N, hidden]; returns o_proj's output.
    /// The spec's per-layer options are read here: q/k norms, the mask (sliding or not) built once by the caller.
    /// </summary>
    private static string Layer(OnnxGraphBuilder g, PretrainedModel model, LlamaDecoderSpec s, IReadOnlyDictionary<string, TorchSharp.Modules.Parameter> ps,
        string p, string h, string bt, Rope rope, string mask)
    {
        int heads = s.Heads, kv = s.KvHeads, hd = s.HeadDim;
        var q = g.SplitHeads(Project(g, model, h, p, "self_attn.q_proj"), bt, heads, hd);
        var k = g.SplitHeads(Project(g, model, h, p, "self_attn.k_proj"), bt, kv, hd);
        var v = g.SplitHeads(Project(g, model, h, p, "self_attn.v_proj"), bt, kv, hd);
        if (s.QkNorm)
        {
            // Qwen3: each head of q and k normalised over head_dim ([B, H, T, D], last axis), before the rotation.
            q = g.RmsNorm(q, Param(model, ps, p + ".self_attn.q_norm.weight"), s.RmsNormEps, p + ".self_attn.q_norm");
            k = g.RmsNorm(k, Param(model, ps, p + ".self_attn.k_norm.weight"), s.RmsNormEps, p + ".self_attn.k_norm");
        }
        q = ApplyRotary(g, q, rope);
        k = ApplyRotary(g, k, rope);
        k = g.RepeatKv(k, bt, kv, heads / kv, hd);
        v = g.RepeatKv(v, bt, kv, heads / kv, hd);
        var y = g.MergeHeads(g.Attention(q, k, v, hd, mask), heads, hd);
        return Project(g, model, y, p, "self_attn.o_proj");
    }

    /// <summary>x·cos + rotate_half(x)·sin with rotate_half(x) = cat(−x₂, x₁) (Hugging Face's half split).</summary>
    private static string ApplyRotary(OnnxGraphBuilder g, string x, Rope rope)
    {
        var first = g.Slice(x, -1, 0, rope.Half);
        var second = g.Slice(x, -1, rope.Half, long.MaxValue);
        var rotated = g.Concat(-1, g.Node("Neg", [second]), first);
        return g.Add(g.Mul(x, rope.Cos), g.Mul(rotated, rope.Sin));
    }
}
