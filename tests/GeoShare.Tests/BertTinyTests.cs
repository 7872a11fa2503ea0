using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>A small random BERT encoder in float64: config refusals, masking, and the distillation loss the planner uses.</summary>
public sealed class BertTinyTests
{
    private const string Config = """
        {"model_type": "bert", "vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 32, "max_position_embeddings": 24, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0}
        """;

    private static BertSentenceEncoder Tiny() =>
        (BertSentenceEncoder)ModelLoader.Build(ModelConfig.Parse(Config, "config.json"), new RandomTensorSource(7, ScalarType.Float64));

    [Fact]
    public void ConfigFieldsThatChangeTheComputationAreRefusedByName()
    {
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(Config.Replace("\"pad_token_id\": 0", "\"position_embedding_type\": \"relative_key\""), "config.json"));
        Assert.Equal("config.json: position_embedding_type 'relative_key' is not supported (absolute only)", e.Message);
        e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(Config.Replace("\"pad_token_id\": 0", "\"is_decoder\": true"), "config.json"));
        Assert.Contains("is_decoder", e.Message);
        e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(Config.Replace("\"pad_token_id\": 0", "\"hidden_act\": \"silu\""), "config.json"));
        Assert.Contains("hidden_act 'silu'", e.Message);
    }

    [Fact]
    public void SitesAreNamedAsTheCheckpointAndEmbeddingsAreUnitVectors()
    {
        var model = Tiny();
        Assert.Equal(12, model.Sites.Count);
        Assert.Contains("encoder.layer.1.attention.output.dense.weight", model.ParametersByName().Keys);
        Assert.Contains("encoder.layer.0.output.LayerNorm.weight", model.ParametersByName().Keys);
        using var _ = torch.no_grad();
        using var ids = torch.tensor(new long[] { 5, 9, 12, 3, 0, 0, 7, 8, 9, 10, 11, 2 }, [2, 6], dtype: ScalarType.Int64);
        var e = model.call(ids);
        Assert.True(e.norm(1).SubScalar(1.0).abs().max().item<double>() < 1e-12);
        // the padded first row equals the same sentence alone
        using var alone = torch.tensor(new long[] { 5, 9, 12, 3 }, [1, 4], dtype: ScalarType.Int64);
        Assert.True(TensorAssert.RelativeError(e[0].unsqueeze(0), model.call(alone)) < 1e-12);
    }

    /// <summary>
    /// L(θ) = mean ‖e_θ − e_dense‖²: zero with zero gradient at the dense weights, so along any direction δ it grows as
    /// t²·½δᵀHδ with H the Gauss–Newton matrix (2/N) Σ JᵀJ; L(tδ)/t² is the same for small t, and equals (1/N) Σ ‖J δ‖².
    /// </summary>
    [Fact]
    public void TheDistillationLossIsZeroWithZeroGradientAndGaussNewtonCurvatureAtTheDenseWeights()
    {
        var model = Tiny();
        using var ids = torch.tensor(new long[] { 5, 9, 12, 3, 6, 7, 0, 0, 8, 10, 11, 13 }, [3, 4], dtype: ScalarType.Int64);
        var batch = (LossBatch)typeof(EmbeddingDistillationBatch).GetMethod("FromIds", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .Invoke(null, [model, ids.clone(), "3 test rows"])!;
        var w = model.ParametersByName()["encoder.layer.0.intermediate.dense.weight"];
        w.requires_grad = true;
        var loss = batch.Loss(model);
        // zero up to rounding: the targets come from the no-grad path (fused attention), the loss from the explicit masked softmax
        Assert.True(loss.item<double>() < 1e-28, $"L = {loss.item<double>()}");
        var g = torch.autograd.grad([loss], [w], allow_unused: true)[0];
        Assert.True(g is null || g.abs().max().item<double>() < 1e-14, $"max |∇L| = {g?.abs().max().item<double>()}");
        w.requires_grad = false;

        using var gen = new Generator(3);
        var delta = torch.randn(w.shape, dtype: ScalarType.Float64, generator: gen);
        double Along(double t)
        {
            using var _ = torch.no_grad();
            w.add_(delta.MulScalar(t), Scalars.One);
            double l = batch.Loss(model).item<double>();
            w.sub_(delta.MulScalar(t));
            return l / (t * t);
        }
        double q1 = Along(1e-4), q2 = Along(2e-4);
        Assert.True(q1 > 0);
        Assert.True(Math.Abs(q1 - q2) / q1 < 1e-3, $"L(tδ)/t² = {q1} at t = 1e-4, {q2} at 2e-4: not quadratic");
        // (1/N) Σ ‖J δ‖² by a finite difference of the embeddings, = ½ δᵀHδ with H = (2/N) Σ JᵀJ
        using (torch.no_grad())
        {
            var e0 = model.call(ids);
            w.add_(delta.MulScalar(1e-6), Scalars.One);
            var jd = model.call(ids).sub(e0).DivScalar(1e-6);
            w.sub_(delta.MulScalar(1e-6));
            double gn = jd.PowScalar(2).sum().item<double>() / 3;
            Assert.True(Math.Abs(gn - q1) / q1 < 1e-3, $"(1/N)Σ‖Jδ‖² = {gn}, L(tδ)/t² = {q1}");
        }
        batch.Dispose();
    }
}
