using GeoShare.Models;
using Onnx;
using static GeoShare.Export.OnnxGraphBuilder;

namespace GeoShare.Export;

/// <summary>
/// LlamaForCausalLM as ONNX: RMSNorm, rotary positions, grouped-query attention, SwiGLU. The rotary cos/sin are the
/// model's own tables (<see cref="LlamaForCausalLM.RotaryTables"/>) stored as initializers, so whatever frequencies the
/// model computes (scaled RoPE included) the graph applies unchanged; sequences are limited to max_position_embeddings.
/// Biases come with the projections. Per-layer variations of the family (a sliding window, q/k norms) belong in
/// <see cref="Layer"/>: one place that reads a layer's options and writes its attention.
/// </summary>
public sealed class LlamaGraph : ArchitectureGraph
{
    public override Architecture Architecture => LlamaArchitecture.Instance;

    public override void Build(PretrainedModel model, OnnxGraphBuilder g)
    {
        var c = (LlamaConfig)model.Config;
        var lm = (LlamaForCausalLM)model;
        var ps = model.ParametersByName();

        g.MaxSequence = c.MaxPositionEmbeddings;
        g.Input(Value("input_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        var bt = g.Node("Shape", ["input_ids"]);
        var t = g.Slice(bt, 0, 1, 2);
        var embed = g.Weight(Param(model, ps, LlamaFamilyLayout.EmbeddingPrefix + ".weight"), LlamaFamilyLayout.EmbeddingPrefix + ".weight");
        var x = g.Reshape(g.Node("Gather", [embed, "input_ids"]), g.Ints(-1, c.Hidden));

        // The tables hold cat(freqs, freqs): only the first half is stored, the graph concatenates it (half the bytes).
        var (cosTable, sinTable) = lm.RotaryTables(c.MaxPositionEmbeddings);
        int half = c.HeadDim / 2;
        string Rotary(TorchSharp.torch.Tensor table, string name)
        {
            var stored = g.Table(table.narrow(1, 0, half).contiguous(), name);
            var rows = g.Node("Slice", [stored, g.Ints(0), t, g.Ints(0)]);
            return g.Concat(-1, rows, rows);
        }
        var rope = new Rope(Rotary(cosTable, "rotary.cos"), Rotary(sinTable, "rotary.sin"), half);
        var mask = g.CausalMask(t);

        for (int l = 0; l < c.Layers; l++)
        {
            string p = c.Architecture.LayerPrefix(l);
            var h = g.RmsNorm(x, Param(model, ps, p + ".input_layernorm.weight"), c.RmsNormEps, p + ".input_layernorm");
            x = g.Add(x, Layer(g, model, c, p, h, bt, rope, mask));
            h = g.RmsNorm(x, Param(model, ps, p + ".post_attention_layernorm.weight"), c.RmsNormEps, p + ".post_attention_layernorm");
            var gate = g.Activation("silu", Project(g, model, h, p, "mlp.gate_proj"));
            x = g.Add(x, Project(g, model, g.Mul(gate, Project(g, model, h, p, "mlp.up_proj")), p, "mlp.down_proj"));
        }
        x = g.RmsNorm(x, Param(model, ps, "model.norm.weight"), c.RmsNormEps, "model.norm");
        var head = g.Weight(Param(model, ps, LlamaFamilyLayout.HeadPrefix + ".weight"), LlamaFamilyLayout.HeadPrefix + ".weight");
        var logits = g.Node("Gemm", [x, head], [Attr("transB", 1L)]);
        g.Node("Reshape", [logits, g.Concat(0, bt, g.Ints(c.VocabSize))], output: "logits");
        g.Output(Value("logits", TensorProto.Types.DataType.Float, "batch", "sequence", c.VocabSize));
    }

    /// <summary>cos and sin [T, headDim] for the current sequence.</summary>
    private sealed record Rope(string Cos, string Sin, int Half);

    /// <summary>One layer's self-attention on the normed input <paramref name="h"/> [N, hidden]; returns o_proj's output.</summary>
    private static string Layer(OnnxGraphBuilder g, PretrainedModel model, LlamaConfig c, string p, string h, string bt, Rope rope, string mask)
    {
        int heads = c.NumAttentionHeads, kv = c.NumKeyValueHeads, hd = c.HeadDim;
        var q = g.SplitHeads(Project(g, model, h, p, "self_attn.q_proj"), bt, heads, hd);
        var k = g.SplitHeads(Project(g, model, h, p, "self_attn.k_proj"), bt, kv, hd);
        var v = g.SplitHeads(Project(g, model, h, p, "self_attn.v_proj"), bt, kv, hd);
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
