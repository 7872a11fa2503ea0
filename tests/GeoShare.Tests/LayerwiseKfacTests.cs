using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// K-FAC layer by layer (boundaries saved, each layer's forward recomputed for its backward step) against K-FAC on the
/// whole model's graph, in memory and streamed from the checkpoint.
/// </summary>
public class LayerwiseKfacTests
{
    private static Dictionary<string, (Tensor A, Tensor G, Tensor? Gradient)> Layerwise(LayerwiseKfac kfac, PretrainedModel shell, LanguageModelBatch batch,
        int samples, bool gradients, out double loss)
    {
        var sites = shell.Sites.Select(s => new LayerwiseKfac.Site(s.Layer, s.Type, s.WeightName)).ToList();
        var result = new Dictionary<string, (Tensor, Tensor, Tensor?)>();
        var order = new List<int>();
        loss = kfac.Compute(batch, sites, samples, seed: 5, gradients, r =>
        {
            order.Add(sites[r.Index].Layer);
            result[r.Block.Name] = (r.Block.A, r.Block.G, r.Gradient);
        });
        Assert.Equal(sites.Count, result.Count);
        // Top layer first: a layer's factors are handed over as soon as its backward step is done.
        Assert.Equal(order.OrderByDescending(l => l), order);
        return result;
    }

    [Theory]
    [InlineData("gpt2-kjv-brown")]
    [InlineData("llama-kjv-brown")]
    public void LayerByLayerFactorsEqualTheWholeGraphs(string name)
    {
        string dir = Repo.Model(name);
        var model = ModelLoader.Load(dir, ScalarType.Float32);
        var windows = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(dir), 128);
        using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(2, 3));
        var names = model.Sites.Select(s => s.WeightName).ToList();
        var whole = KfacBlock.Compute(model, batch, model.Sites.Select(s => (s.WeightName, model.GetProjection(s))).ToList(), samples: 2, seed: 5);
        var layerwise = Layerwise(LayerwiseKfac.For(model), model, batch, samples: 2, gradients: true, out double loss);
        using var wholeLoss = batch.Loss(model);
        Assert.Equal(wholeLoss.item<float>(), loss, 1e-5);
        for (int i = 0; i < whole.Count; i++)
        {
            var (a, g, gradient) = layerwise[names[i]];
            Assert.True(TensorAssert.RelativeError(a, whole[i].A) < 1e-6, $"{names[i]}: A");
            Assert.True(TensorAssert.RelativeError(g, whole[i].G) < 1e-5, $"{names[i]}: G {TensorAssert.RelativeError(g, whole[i].G):E2}");
            Assert.True(g.norm().item<double>() > 0, $"{names[i]}: G is zero");
            // ∂L/∂W back-propagated beside the factors: the whole graph's gradient.
            var w = ((DenseLinear)model.GetProjection(model.Sites[i])).Weight;
            w.requires_grad = true;
            using (var l = batch.Loss(model))
            {
                var reference = torch.autograd.grad([l], [w])[0].reshape(-1).to_type(ScalarType.Float64);
                Assert.True(TensorAssert.RelativeError(gradient!, reference) < 1e-5, $"{names[i]}: gradient");
            }
            w.requires_grad = false;
            whole[i].Dispose();
        }
        model.Dispose();
    }

    [Fact]
    public void TheStreamedSweepEqualsTheInMemoryOne()
    {
        string dir = Repo.Model("llama-kjv-brown");
        var model = ModelLoader.Load(dir, ScalarType.Float32);
        var windows = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(dir), 128);
        using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(2, 7));
        var inMemory = Layerwise(LayerwiseKfac.For(model), model, batch, samples: 1, gradients: false, out double loss);
        using var stream = LayerStream.OpenDense(dir);
        var streamed = Layerwise(LayerwiseKfac.For(stream), stream.Shell, batch, samples: 1, gradients: false, out double streamedLoss);
        Assert.Equal(loss, streamedLoss);
        foreach (var (site, (a, g, _)) in inMemory)
        {
            Assert.True(TensorAssert.RelativeError(streamed[site].A, a) < 1e-12, $"{site}: A");
            Assert.True(TensorAssert.RelativeError(streamed[site].G, g) < 1e-12, $"{site}: G");
        }
        model.Dispose();
    }

    [Fact]
    public void TheEngineUsesTheLayerwiseSweepForLanguageModelsAndRefusesItElsewhere()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model);
        var blocks = CurvatureEngine.ResolveBlocks(model, null);
        CurvatureOptions Options(KfacSweep sweep) => new()
        {
            Method = CurvatureMethod.Kfac, Top = 2, KfacSamples = 2, Seed = 3, KeepVectors = true, FactoredVectors = true, KeepGradient = true, KfacSweep = sweep,
        };
        var auto = CurvatureEngine.Collect(model, batch, blocks, Options(KfacSweep.Auto));
        var whole = CurvatureEngine.Collect(model, batch, blocks, Options(KfacSweep.Graph));
        for (int i = 0; i < blocks.Count; i++)
        {
            Assert.Equal(whole[i].Name, auto[i].Name);
            for (int k = 0; k < 2; k++) Assert.Equal(whole[i].TopEigenvalues[k], auto[i].TopEigenvalues[k], 1e-6 * whole[i].TopEigenvalues[0]);
            Assert.Equal(whole[i].Trace!.Value, auto[i].Trace!.Value, 1e-5 * whole[i].Trace!.Value);
            Assert.True(TensorAssert.RelativeError(auto[i].OutputFactorDiagonal!, whole[i].OutputFactorDiagonal!) < 1e-5);
            Assert.True(TensorAssert.RelativeError(auto[i].Gradient!, whole[i].Gradient!) < 1e-5);
            Assert.Equal(whole[i].Loss!.Value, auto[i].Loss!.Value, 1e-6);
        }
        // A block outside the decoder layers (the head's norm) cannot be swept layer by layer: refused by name when required.
        var vit = TinyModels.Vit();
        using var images = TinyModels.ImageBatch();
        var vitBlocks = CurvatureEngine.ResolveBlocks(vit, null).Take(1).ToList();
        var e = Assert.Throws<UsageException>(() => CurvatureEngine.Collect(vit, images, vitBlocks, Options(KfacSweep.Layers)));
        Assert.Contains("kfac_sweep", e.Message);
        Assert.Single(CurvatureEngine.Collect(vit, images, vitBlocks, Options(KfacSweep.Auto)));
    }
}
