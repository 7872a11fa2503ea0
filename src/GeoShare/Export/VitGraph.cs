using GeoShare.Models;
using Onnx;
using static GeoShare.Export.OnnxGraphBuilder;

namespace GeoShare.Export;

/// <summary>ViTForImageClassification as ONNX: patch Conv (kernel = stride = patch), CLS token, pre-LayerNorm encoder, classifier on CLS.</summary>
public sealed class VitGraph : ArchitectureGraph
{
    public override Architecture Architecture => VitArchitecture.Instance;

    public override void Build(PretrainedModel model, OnnxGraphBuilder g)
    {
        var c = (VitConfig)model.Config;
        var ps = model.ParametersByName();
        int d = c.Hidden, heads = c.NumAttentionHeads, hd = d / heads, tokens = c.NumPatches + 1;

        g.Input(Value("pixel_values", TensorProto.Types.DataType.Float, "batch", c.NumChannels, c.ImageSize, c.ImageSize));
        var b = g.Slice(g.Node("Shape", ["pixel_values"]), 0, 0, 1);
        const string proj = "vit.embeddings.patch_embeddings.projection";
        var patches = g.Node("Conv", ["pixel_values", g.Weight(Param(model, ps, proj + ".weight"), proj + ".weight"), g.Weight(Param(model, ps, proj + ".bias"), proj + ".bias")],
            [Attr("kernel_shape", new long[] { c.PatchSize, c.PatchSize }), Attr("strides", new long[] { c.PatchSize, c.PatchSize })]);
        patches = g.Transpose(g.Reshape(patches, g.Ints(0, d, -1)), 0, 2, 1);            // [B, patches, d], row-major patch order
        var cls = g.Node("Expand", [g.Weight(Param(model, ps, "vit.embeddings.cls_token"), "vit.embeddings.cls_token"), g.Concat(0, b, g.Ints(1, d))]);
        var x = g.Add(g.Concat(1, cls, patches), g.Weight(Param(model, ps, "vit.embeddings.position_embeddings"), "vit.embeddings.position_embeddings"));
        x = g.Reshape(x, g.Ints(-1, d));                                                   // [B·tokens, d]
        var bt = g.Concat(0, b, g.Ints(tokens));

        for (int l = 0; l < c.Layers; l++)
        {
            string p = c.Architecture.LayerPrefix(l);
            var h = g.LayerNorm(x, Param(model, ps, p + ".layernorm_before.weight"), Param(model, ps, p + ".layernorm_before.bias"), c.LayerNormEps, p + ".layernorm_before");
            string Heads(string local) => g.SplitHeads(Project(g, model, h, p, local), bt, heads, hd);
            var y = g.MergeHeads(g.Attention(Heads("attention.attention.query"), Heads("attention.attention.key"), Heads("attention.attention.value"), hd, mask: null), heads, hd);
            x = g.Add(x, Project(g, model, y, p, "attention.output.dense"));
            h = g.LayerNorm(x, Param(model, ps, p + ".layernorm_after.weight"), Param(model, ps, p + ".layernorm_after.bias"), c.LayerNormEps, p + ".layernorm_after");
            h = g.Activation(c.HiddenAct, Project(g, model, h, p, "intermediate.dense"));
            x = g.Add(x, Project(g, model, h, p, "output.dense"));
        }
        x = g.LayerNorm(x, Param(model, ps, "vit.layernorm.weight"), Param(model, ps, "vit.layernorm.bias"), c.LayerNormEps, "vit.layernorm");
        var first = g.Node("Gather", [g.Reshape(x, g.Concat(0, b, g.Ints(tokens, d))), g.Scalar(0)], [Attr("axis", 1L)]); // CLS: [B, d]
        var w = g.Weight(Param(model, ps, "classifier.weight"), "classifier.weight");
        var bias = g.Weight(Param(model, ps, "classifier.bias"), "classifier.bias");
        g.Node("Gemm", [first, w, bias], [Attr("transB", 1L)], output: "logits");
        g.Output(Value("logits", TensorProto.Types.DataType.Float, "batch", c.NumLabels));
    }
}
