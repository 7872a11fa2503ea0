using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Tie mode and the coefficient refit, checked against values computed here independently of the library.</summary>
public class SharingModesTests
{
    private static (PretrainedModel Model, TokenWindows Windows, CalibrationSet Calibration) Tiny(int layers, long seed = 4)
    {
        var model = TinyModels.Gpt2Deep(layers, seed);
        var rng = new Random(7);
        var windows = TokenWindows.FromIds("random", Enumerable.Range(0, 8 * 40).Select(_ => rng.Next(13)).ToArray(), 8);
        return (model, windows, CalibrationSet.FromWindows(windows, windows.Select(40, 1)));
    }

    /// <summary>Records the inputs of watched projections during a forward pass (not through ActivationGrams).</summary>
    private sealed class InputRecorder : IProjectionProbe
    {
        public Dictionary<LinearMap, Tensor> Inputs { get; } = new(ReferenceEqualityComparer.Instance);

        public void OnForward(LinearMap projection, Tensor input, Tensor output)
        {
            // Kept past the model's own dispose scopes (the layers free their temporaries).
            if (Inputs.ContainsKey(projection)) Inputs[projection] = input.detach().reshape(-1, projection.InFeatures).to_type(ScalarType.Float64).clone().DetachFromDisposeScope();
        }
    }

    /// <summary>Each site's inputs [rows, in] over every calibration window, in the model as it is now.</summary>
    private static Dictionary<string, Tensor> Inputs(PretrainedModel model, TokenWindows windows, IEnumerable<ProjectionSite> sites)
    {
        var recorder = new InputRecorder();
        var maps = sites.ToDictionary(s => s.Name, s => model.GetProjection(s));
        foreach (var m in maps.Values) { recorder.Inputs[m] = torch.empty(0); m.Probe = recorder; }
        try
        {
            using (torch.no_grad()) model.call(windows.Batch(Enumerable.Range(0, windows.Count).ToArray()));
        }
        finally
        {
            foreach (var m in maps.Values) m.Probe = null;
        }
        return maps.ToDictionary(kv => kv.Key, kv => recorder.Inputs[kv.Value]);
    }

    private static Tensor DenseInOut(PretrainedModel model, ProjectionSite site)
    {
        using var _ = torch.no_grad();
        return model.GetProjection(site).WeightInOut().to_type(ScalarType.Float64).detach().clone();
    }

    /// <summary>Mean next-token NLL from the logits, by log-softmax and gather (not through the Evaluator).</summary>
    private static double MeanNll(PretrainedModel model, Tensor ids)
    {
        using var _ = torch.no_grad();
        var logp = model.call(ids).to_type(ScalarType.Float64).log_softmax(-1);
        var next = ids[TensorIndex.Colon, TensorIndex.Slice(1)].unsqueeze(-1);
        return -logp[TensorIndex.Colon, TensorIndex.Slice(0, -1)].gather(-1, next).mean().item<double>();
    }

    [Fact]
    public void TiedLayersHoldOneTensorThatIsTheInputWeightedMeanAndTheLossIsThatOfThoseWeights()
    {
        var (model, windows, calibration) = Tiny(3);
        string[] tiedTypes = ["attn.c_attn", "mlp.c_fc"];
        int[] coloring = [0, 1, 0]; // layers 0 and 2 share one matrix, layer 1 keeps its own
        var original = model.Sites.ToDictionary(s => s.Name, s => DenseInOut(model, s));
        var inputs = Inputs(model, windows, model.Sites);
        long before = model.ParameterCount();

        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = SharingPlan.ForModel(model, "custom", null, tiedTypes.ToDictionary(t => t, _ => new TypePlan { Mode = SharingMode.Tie, Coloring = coloring }));
        var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions());

        var expected = new Dictionary<string, Tensor>();
        foreach (var type in tiedTypes)
        {
            var a = (DenseLinear)model.GetProjection(model.Site(type, 0));
            var b = (DenseLinear)model.GetProjection(model.Site(type, 1));
            var c = (DenseLinear)model.GetProjection(model.Site(type, 2));
            Assert.Same(a.Weight, c.Weight);
            Assert.Equal(TensorStorage.Pointer(a.Weight), TensorStorage.Pointer(c.Weight));
            Assert.NotEqual(TensorStorage.Pointer(a.Weight), TensorStorage.Pointer(b.Weight));
            Assert.NotSame(a.Bias, c.Bias);

            // The minimiser of Σᵢ ‖Xᵢ(W − Wᵢ)‖² over the recorded inputs: least squares on the stacked system [X₀; X₂] W = [X₀W₀; X₂W₂].
            string s0 = model.Site(type, 0).Name, s2 = model.Site(type, 2).Name;
            var x = torch.cat([inputs[s0], inputs[s2]], 0);
            var y = torch.cat([inputs[s0].matmul(original[s0]), inputs[s2].matmul(original[s2])], 0);
            var w = torch.linalg.lstsq(x, y).Solution;
            double Objective(Tensor m) => x.matmul(m).sub(y).PowScalar(2).sum().item<double>();
            var tied = a.WeightInOut().to_type(ScalarType.Float64);
            double err = TensorAssert.RelativeError(tied, w);
            Assert.True(err < 1e-6, $"{type}: tied weight is {err:E2} from the input-weighted mean");
            // The code damps XᵀX by 1e-10 of its mean diagonal: about 1e-8 here on the weakest input direction.
            double outputs = TensorAssert.RelativeError(x.matmul(tied), x.matmul(w));
            Assert.True(outputs < 1e-7, $"{type}: outputs of the tied weight are {outputs:E2} from those of the input-weighted mean");
            Assert.True(Objective(tied) <= Objective(w) * (1 + 1e-9), $"{type}: Σ‖Xᵢ(W − Wᵢ)‖² is {Objective(tied):G10}, its minimum {Objective(w):G10}");
            // The weighting matters here: the plain mean is clearly worse, so the test tells the two apart.
            var mean = original[s0].add(original[s2], Scalars.One).DivScalar(2L);
            Assert.True(Objective(mean) > 1.01 * Objective(w), $"{type}: the plain mean is as good as the weighted one; the test cannot tell them apart");
            // A color of one layer keeps its matrix, up to that damping (on its calibration inputs, exactly).
            string s1 = model.Site(type, 1).Name;
            var own = b.WeightInOut().to_type(ScalarType.Float64);
            Assert.True(TensorAssert.RelativeError(own, original[s1]) < 1e-4, $"{type}: a color of one layer changed its matrix");
            Assert.True(TensorAssert.RelativeError(inputs[s1].matmul(own), inputs[s1].matmul(original[s1])) < 1e-7, $"{type}: a color of one layer changed its outputs");
            expected[s0] = expected[s2] = w;
        }
        long matrix = tiedTypes.Sum(t => (long)model.Site(t, 0).InFeatures * model.Site(t, 0).OutFeatures);
        Assert.Equal(before - matrix, model.ParameterCount());
        Assert.Equal(model.ParameterCount(), report.ModelParametersAfter);

        // The weights computed here written into an untouched copy, one tensor per layer: the same logits and loss,
        // up to the damping (the singleton color's matrix is left as it was in the copy).
        var reference = TinyModels.Gpt2Deep(3);
        using (torch.no_grad())
            foreach (var (site, w) in expected)
            {
                var d = (DenseLinear)reference.GetProjection(site);
                d.Weight.copy_(d.Layout == WeightLayout.InOut ? w : w.t());
            }
        var ids = windows.Batch([0, 1, 2, 3, 4]);
        Tensor Logits(PretrainedModel m) { using var _ = torch.no_grad(); return m.call(ids); }
        double logits = TensorAssert.RelativeError(Logits(model), Logits(reference));
        Assert.True(logits < 1e-6, $"logits {logits:E2} from those of the independently tied copy");
        double nll = MeanNll(reference, ids);
        var score = Evaluator.Perplexity(model, windows, windows: [0, 1, 2, 3, 4]);
        Assert.Equal(MeanNll(model, ids), score.MeanNll, 1e-12);
        Assert.Equal(nll, score.MeanNll, 1e-7);
        Assert.Equal(Math.Exp(nll), score.Perplexity, 1e-6);
        Assert.True(Math.Abs(MeanNll(TinyModels.Gpt2Deep(3), ids) - nll) > 1e-4, "tying did not change the loss: the comparison shows nothing");
    }

    [Fact]
    public void UnweightedTieIsThePlainMean()
    {
        var (model, _, calibration) = Tiny(2);
        var w0 = DenseInOut(model, model.Site("mlp.c_fc", 0));
        var w1 = DenseInOut(model, model.Site("mlp.c_fc", 1));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = SharingPlan.ForModel(model, "custom", null, new() { ["mlp.c_fc"] = new TypePlan { Mode = SharingMode.Tie, Coloring = [0, 0] } });
        PlanCompressor.Apply(model, plan, grams, new CompressionOptions { WeightedTie = false });
        Assert.True(TensorAssert.RelativeError(model.GetProjection(model.Site("mlp.c_fc", 1)).WeightInOut(), w0.add(w1, Scalars.One).MulScalar(0.5)) < 1e-14);
    }

    [Fact]
    public void RefitChangesTheCoefficientsAndLowersTheReconstructionErrorOfEveryRefittedLayer()
    {
        var (plain, windows, calibration) = Tiny(3);
        var (refitted, _, _) = Tiny(3);
        var original = plain.Sites.ToDictionary(s => s.Name, s => DenseInOut(plain, s));
        using var grams = ActivationGrams.Collect(plain, calibration, plain.Sites);
        var plan = Baselines.Create("adjacent", plain, 0.5, new BaselineOptions(), grams);
        var without = PlanCompressor.Apply(plain, plan, grams, new CompressionOptions { Refit = false }, calibration);
        var with = PlanCompressor.Apply(refitted, plan, grams, new CompressionOptions { Refit = true }, calibration);
        Assert.False(without.Refitted);
        Assert.True(with.Refitted);

        // Each layer's output error on the calibration inputs it sees in its own compressed model: ‖X(Ŵ − W)‖².
        var xPlain = Inputs(plain, windows, plain.Sites);
        var xRefit = Inputs(refitted, windows, refitted.Sites);
        double Error(PretrainedModel m, Dictionary<string, Tensor> x, ProjectionSite s) =>
            x[s.Name].matmul(m.GetProjection(s).WeightInOut().to_type(ScalarType.Float64).sub(original[s.Name])).PowScalar(2).sum().item<double>();
        double totalPlain = 0, totalRefit = 0;
        int lower = 0;
        foreach (var s in plain.Sites)
        {
            var p = (SharedBasisLinear)plain.GetProjection(s);
            var r = (SharedBasisLinear)refitted.GetProjection(s);
            Assert.Equal(0.0, TensorAssert.RelativeError(r.Basis, p.Basis)); // the refit keeps the basis
            Assert.True(TensorAssert.RelativeError(r.Coefficients, p.Coefficients) > 1e-3, $"{s.Name}: refit left the coefficients as they were");
            double ep = Error(plain, xPlain, s), er = Error(refitted, xRefit, s);
            totalPlain += ep;
            totalRefit += er;
            if (er < ep) lower++;
        }
        Assert.True(totalRefit < 0.9 * totalPlain, $"reconstruction error {totalRefit:G4} with the refit, {totalPlain:G4} without");
        // The first projection of layer 0 sees the same inputs in both models, so its refit is least squares on them: never worse.
        var first = plain.Site(plain.ProjectionTypes[0], 0);
        Assert.True(Error(refitted, xRefit, first) <= Error(plain, xPlain, first) * (1 + 1e-10));
        Assert.True(lower >= plain.Sites.Count * 3 / 4, $"the refit lowered the error of only {lower} of {plain.Sites.Count} layers");
    }

    [Fact]
    public void TiedModelSavesEachTiedMatrixOnceAndReloadsToIdenticalLogits()
    {
        using var tmp = new TempDir();
        string source = TinyModelFolders.Gpt2(tmp, 3);
        var model = ModelLoader.Load(source);
        var windows = TokenWindows.FromFile(TinyModelFolders.Text(tmp), ByteLevelBpeTokenizer.Load(source), 256);
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(8, 4));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = Baselines.Create("all", model, 0.5, new BaselineOptions { Mode = SharingMode.Tie, SharedTypes = ["attn.c_attn", "mlp.c_fc"] }, grams);
        var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        var ids = windows.Batch([0, 1]);
        Tensor Logits(PretrainedModel m) { using var _ = torch.no_grad(); return m.call(ids); }
        var before = Logits(model);

        string dir = tmp.File("tied");
        CompressedCheckpoint.Save(model, plan, source, dir, report);
        var loaded = ModelFolder.Load(dir);
        Assert.Equal(0.0, TensorAssert.RelativeError(Logits(loaded), before));
        Assert.Equal(model.ParameterCount(), loaded.ParameterCount());

        var file = SafetensorsFile.Open(Path.Combine(dir, Checkpoint.SingleFile));
        foreach (var type in new[] { "attn.c_attn", "mlp.c_fc" })
        {
            var site = loaded.Site(type, 0);
            var stored = file.Entries.Keys.Where(k => k.StartsWith($"geoshare.shared.{type}.")).ToList();
            Assert.Equal([CompressedCheckpoint.SharedName(type, 0, "weight")], stored);
            Assert.Equal((long)site.InFeatures * site.OutFeatures, file.Entries[stored[0]].Elements);
            Assert.All(Enumerable.Range(0, 3), l => Assert.DoesNotContain(loaded.Site(type, l).WeightName, file.Entries.Keys));
            // Reloaded, the layers of the color hold one tensor again (not three equal copies).
            var w = ((DenseLinear)loaded.GetProjection(site)).Weight;
            Assert.All(Enumerable.Range(1, 2), l => Assert.Same(w, ((DenseLinear)loaded.GetProjection(loaded.Site(type, l))).Weight));
        }
        Assert.Equal(loaded.ParameterCount(), file.Entries.Values.Sum(e => e.Elements));
    }
}
