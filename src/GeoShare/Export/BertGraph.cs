using GeoShare.Models;
using Onnx;
using static GeoShare.Export.OnnxGraphBuilder;

namespace GeoShare.Export;

/// <summary>
/// The bert sentence encoder as ONNX: <c>input_ids</c> (int64 [batch, sequence], padded with pad_token_id) →
/// <c>sentence_embedding</c> (float [batch, hidden]): embeddings, post-LayerNorm encoder with the padding masked out of
/// attention (the dtype's lowest value added to masked scores, as transformers does), mean pooling over the mask, L2
/// normalisation — what <see cref="BertSentenceEncoder"/> computes.
/// </summary>
public sealed class BertGraph : ArchitectureGraph
{
    public override Architecture Architecture => BertArchitecture.Instance;

    public override void Build(PretrainedModel model, OnnxGraphBuilder g)
    {
        var c = (BertConfig)model.Config;
        var ps = model.ParametersByName();
        int d = c.Hidden, heads = c.NumAttentionHeads, hd = d / heads;

        g.Input(Value("input_ids", TensorProto.Types.DataType.Int64, "batch", "sequence"));
        var bt = g.Node("Shape", ["input_ids"]);
        var t = g.Node("Gather", [bt, g.Scalar(1)], [Attr("axis", 0L)]);                     // 0-dim T
        var keep = g.Node("Cast", [g.Node("Not", [g.Node("Equal", ["input_ids", g.Scalar(c.PadTokenId)])])], [Attr("to", (long)TensorProto.Types.DataType.Float)]); // [B, T]
        // [B, 1, 1, T]: 0 where a key is a token, the lowest float where it is padding
        var maskBias = g.Mul(g.Node("Unsqueeze", [g.Node("Sub", [g.Float(1f), keep]), g.Ints(1, 2)]), g.Float(float.MinValue));

        string Table(string name) => g.Weight(Param(model, ps, name), name);
        var words = g.Node("Gather", [Table("embeddings.word_embeddings.weight"), "input_ids"], [Attr("axis", 0L)]);    // [B, T, d]
        var positions = g.Node("Gather", [Table("embeddings.position_embeddings.weight"), g.Node("Range", [g.Scalar(0), t, g.Scalar(1)])], [Attr("axis", 0L)]);
        var type0 = g.Node("Gather", [Table("embeddings.token_type_embeddings.weight"), g.Scalar(0)], [Attr("axis", 0L)]);
        var x = g.Add(g.Add(words, positions), type0);
        x = g.LayerNorm(x, Param(model, ps, "embeddings.LayerNorm.weight"), Param(model, ps, "embeddings.LayerNorm.bias"), c.LayerNormEps, "embeddings.LayerNorm");
        x = g.Reshape(x, g.Ints(-1, d));                                                          // [B·T, d]

        for (int l = 0; l < c.Layers; l++)
        {
            string p = c.Architecture.LayerPrefix(l);
            string Heads(string local) => g.SplitHeads(Project(g, model, x, p, local), bt, heads, hd);
            var y = g.MergeHeads(g.Attention(Heads("attention.self.query"), Heads("attention.self.key"), Heads("attention.self.value"), hd, maskBias), heads, hd);
            var a = g.LayerNorm(g.Add(Project(g, model, y, p, "attention.output.dense"), x),
                Param(model, ps, p + ".attention.output.LayerNorm.weight"), Param(model, ps, p + ".attention.output.LayerNorm.bias"), c.LayerNormEps, p + ".attention.output.LayerNorm");
            var h = g.Activation(c.HiddenAct, Project(g, model, a, p, "intermediate.dense"));
            x = g.LayerNorm(g.Add(Project(g, model, h, p, "output.dense"), a),
                Param(model, ps, p + ".output.LayerNorm.weight"), Param(model, ps, p + ".output.LayerNorm.bias"), c.LayerNormEps, p + ".output.LayerNorm");
        }

        // sentence-transformers' mean pooling over the mask, then x / max(‖x‖, 1e-12)
        var hidden = g.Reshape(x, g.Concat(0, bt, g.Ints(d)));                                   // [B, T, d]
        var m = g.Node("Unsqueeze", [keep, g.Ints(2)]);                                          // [B, T, 1]
        var summed = g.Node("ReduceSum", [g.Mul(hidden, m), g.Ints(1)], [Attr("keepdims", 0L)]);  // [B, d]
        var counts = g.Node("Max", [g.Node("ReduceSum", [m, g.Ints(1)], [Attr("keepdims", 0L)]), g.Float(1e-9f)]);
        var mean = g.Node("Div", [summed, counts]);
        var norm = g.Node("Max", [g.Node("Sqrt", [g.Node("ReduceSum", [g.Mul(mean, mean), g.Ints(1)], [Attr("keepdims", 1L)])]), g.Float(1e-12f)]);
        g.Node("Div", [mean, norm], output: "sentence_embedding");
        g.Output(Value("sentence_embedding", TensorProto.Types.DataType.Float, "batch", d));
    }
}
