using GeoShare.Models;
using Onnx;
using static GeoShare.Export.OnnxGraphBuilder;

namespace GeoShare.Export;

/// <summary>GPT2LMHeadModel as ONNX: learned positions, pre-LayerNorm blocks, fused c_attn split into q, k, v, tied lm_head.</summary>
public sealed class Gpt2Graph : ArchitectureGraph
{
    public override Architecture Architecture => Gpt2Architecture.Instance;

    public override void Build(PretrainedModel model, OnnxGraphBuilder g)
    {
        var c = (Gpt2Config)model.Config;
        // The graph's attention scales by 1/√headDim; the other scalings of config.json are refused, not written wrong.
        if (!c.ScaleAttnWeights || c.ScaleAttnByInverseLayerIdx)
            throw new UsageException("model", $"config.json sets scale_attn_weights={c.ScaleAttnWeights.ToString().ToLowerInvariant()}, scale_attn_by_inverse_layer_idx={c.ScaleAttnByInverseLayerIdx.ToString().ToLowerInvariant()}: the exporter writes only GPT-2's default 1/√d attention scale");
        var ps = model.ParametersByName();
        int d = c.NEmbd, heads = c.NHead, hd = d / heads;

        g.MaxSequence = c.NPositions;
        g.Input(Value("input_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        var bt = g.Node("Shape", ["input_ids"]);
        var t = g.Slice(bt, 0, 1, 2);
        var positions = g.Node("Range", [g.Scalar(0), g.Node("Squeeze", [t, g.Ints(0)]), g.Scalar(1)]);
        var wte = g.Weight(Param(model, ps, Gpt2Architecture.EmbeddingPrefix + ".weight"), Gpt2Architecture.EmbeddingPrefix + ".weight");
        var wpe = g.Weight(Param(model, ps, "transformer.wpe.weight"), "transformer.wpe.weight");
        var x = g.Add(g.Node("Gather", [wte, "input_ids"]), g.Node("Gather", [wpe, positions]));
        x = g.Reshape(x, g.Ints(-1, d)); // the residual stream as [B·T, d]
        var mask = g.CausalMask(t);

        for (int l = 0; l < c.NLayer; l++)
        {
            string p = c.Architecture.LayerPrefix(l);
            var h = g.LayerNorm(x, Param(model, ps, p + ".ln_1.weight"), Param(model, ps, p + ".ln_1.bias"), c.LayerNormEpsilon, p + ".ln_1");
            var qkv = Project(g, model, h, p, "attn.c_attn");
            string Heads(int i) => g.SplitHeads(g.Slice(qkv, 1, (long)i * d, (long)(i + 1) * d), bt, heads, hd);
            var y = g.MergeHeads(g.Attention(Heads(0), Heads(1), Heads(2), hd, mask), heads, hd);
            x = g.Add(x, Project(g, model, y, p, "attn.c_proj"));
            h = g.LayerNorm(x, Param(model, ps, p + ".ln_2.weight"), Param(model, ps, p + ".ln_2.bias"), c.LayerNormEpsilon, p + ".ln_2");
            h = g.Activation(c.Activation, Project(g, model, h, p, "mlp.c_fc"));
            x = g.Add(x, Project(g, model, h, p, "mlp.c_proj"));
        }
        x = g.LayerNorm(x, Param(model, ps, "transformer.ln_f.weight"), Param(model, ps, "transformer.ln_f.bias"), c.LayerNormEpsilon, "transformer.ln_f");
        // lm_head reads the embedding when tied: the same tensor, so the same initializer.
        var head = g.Weight(Param(model, ps, Gpt2Architecture.HeadPrefix + ".weight"), Gpt2Architecture.HeadPrefix + ".weight");
        var logits = g.Node("Gemm", [x, head], [Attr("transB", 1L)]);
        g.Node("Reshape", [logits, g.Concat(0, bt, g.Ints(c.VocabSize))], output: "logits");
        g.Output(Value("logits", TensorProto.Types.DataType.Float, "batch", "sequence", c.VocabSize));
    }
}
