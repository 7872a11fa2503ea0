using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class SharingTests
{
    private static (PretrainedModel Model, CalibrationSet Calibration, Tensor Ids) TinyGpt2(long seed = 1, ScalarType dtype = ScalarType.Float64)
    {
        var model = TinyModels.Gpt2(seed, dtype);
        var rng = new Random(7);
        var ids = Enumerable.Range(0, 8 * 40).Select(_ => rng.Next(13)).ToArray();
        var windows = TokenWindows.FromIds("random", ids, 8);
        return (model, CalibrationSet.FromWindows(windows, windows.Select(40, 1)), windows.Batch([0, 1, 2]));
    }

    private static Tensor Logits(PretrainedModel m, Tensor ids) { using var _ = torch.no_grad(); return m.call(ids); }

    [Theory]
    [InlineData("svd", 0.3)]
    [InlineData("adjacent", 0.2)]
    [InlineData("all", 0.5)]
    [InlineData("sequence", 0.4)]
    [InlineData("cycle", 0.3)]
    [InlineData("cycle-rev", 0.3)]
    [InlineData("sandwich", 0.25)]
    [InlineData("similarity", 0.3)]
    [InlineData("random", 0.3)]
    public void EveryBaselineKeepsItsBudgetWithinOneRankStep(string method, double ratio)
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var plan = Baselines.Create(method, model, ratio, new BaselineOptions { Seed = 3 }, method == "similarity" ? FakeGrams(model) : null);
        plan.Validate(model, "plan");
        foreach (var (type, tp) in plan.Types)
        {
            var site = model.Site(type, 0);
            foreach (var (group, rank) in tp.Groups().Zip(tp.Ranks!))
            {
                double full = (double)group.Length * site.InFeatures * site.OutFeatures;
                long kept = SharedBasis.BasisParameters(site.InFeatures, site.OutFeatures, group.Length, rank);
                long step = site.InFeatures + (long)group.Length * site.OutFeatures;
                Assert.InRange(kept, (1 - ratio) * full - step, (1 - ratio) * full);
            }
        }
    }

    private static ActivationGrams FakeGrams(PretrainedModel model)
    {
        var rng = new Random(1);
        var ids = Enumerable.Range(0, 256 * 3).Select(_ => rng.Next(8192)).ToArray();
        var w = TokenWindows.FromIds("random", ids, 256);
        return ActivationGrams.Collect(model, CalibrationSet.FromWindows(w, [0, 1, 2]), model.Sites);
    }

    [Fact]
    public void CompressedModelCountsParametersExactlyAndSharedBasesAreOneStorage()
    {
        var (model, calibration, _) = TinyGpt2();
        long before = model.ParameterCount();
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = Baselines.Create("adjacent", model, 0.3, new BaselineOptions(), grams);
        var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        var l0 = (SharedBasisLinear)model.GetProjection("transformer.h.0.attn.c_attn");
        var l1 = (SharedBasisLinear)model.GetProjection("transformer.h.1.attn.c_attn");
        Assert.Equal(TensorStorage.Pointer(l0.Basis), TensorStorage.Pointer(l1.Basis));
        Assert.NotEqual(TensorStorage.Pointer(l0.Coefficients), TensorStorage.Pointer(l1.Coefficients));
        long removed = report.MatrixParametersBefore - report.MatrixParametersAfter;
        Assert.Equal(before - removed, model.ParameterCount());
        Assert.Equal(report.ModelParametersAfter, model.ParameterCount());
        long expected = plan.Types.Sum(t => t.Value.Groups().Zip(t.Value.Ranks!).Sum(g =>
            SharedBasis.BasisParameters(model.Site(t.Key, 0).InFeatures, model.Site(t.Key, 0).OutFeatures, g.First.Length, g.Second)));
        Assert.Equal(expected, report.MatrixParametersAfter);
    }

    [Theory]
    [InlineData(0.3, false)]
    [InlineData(0.4, true)]
    public void TheDefaultRefitIsBasisSharingsFromRatioPointFour(double ratio, bool refitted)
    {
        var (model, calibration, _) = TinyGpt2();
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = Baselines.Create("adjacent", model, ratio, new BaselineOptions(), grams);
        Assert.Equal(refitted, PlanCompressor.Apply(model, plan, grams, new CompressionOptions(), calibration).Refitted);
    }

    [Fact]
    public void TiedMatricesAreOneStorageUsedByEveryLayerOfTheColor()
    {
        var (model, calibration, ids) = TinyGpt2();
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var plan = Baselines.Create("all", model, 0.5, new BaselineOptions { Mode = SharingMode.Tie, SharedTypes = ["mlp.c_fc"] }, grams);
        PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        var a = (DenseLinear)model.GetProjection("transformer.h.0.mlp.c_fc");
        var b = (DenseLinear)model.GetProjection("transformer.h.1.mlp.c_fc");
        Assert.Same(a.Weight, b.Weight);
        Assert.NotSame(a.Bias, b.Bias);
        Assert.True(torch.isfinite(Logits(model, ids)).all().item<bool>());
    }

    [Fact]
    public void FullRankGroupsOfOneReproduceTheOriginalLogits()
    {
        var (model, calibration, ids) = TinyGpt2();
        var reference = Logits(model, ids);
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        var types = model.ProjectionTypes.ToDictionary(t => t, t =>
        {
            var s = model.Site(t, 0);
            return new TypePlan { Mode = SharingMode.Basis, Coloring = [0, 1], Ranks = [Math.Min(s.InFeatures, s.OutFeatures), Math.Min(s.InFeatures, s.OutFeatures)] };
        });
        PlanCompressor.Apply(model, SharingPlan.ForModel(model, "full-rank", 0, types), grams, new CompressionOptions());
        Assert.IsType<SharedBasisLinear>(model.GetProjection("transformer.h.1.mlp.c_proj"));
        Assert.True(TensorAssert.RelativeError(Logits(model, ids), reference) < 1e-5);
    }

    [Fact]
    public void FullRankOnTheRealGpt2InFloat32ReproducesItsLogits()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var ids = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors")).Read("input_ids");
        var reference = Logits(model, ids);
        using var grams = FakeGrams(model);
        var types = model.ProjectionTypes.ToDictionary(t => t, t =>
        {
            var s = model.Site(t, 0);
            int full = Math.Min(s.InFeatures, s.OutFeatures);
            return new TypePlan { Mode = SharingMode.Basis, Coloring = Enumerable.Range(0, 12).ToArray(), Ranks = Enumerable.Repeat(full, 12).ToArray() };
        });
        PlanCompressor.Apply(model, SharingPlan.ForModel(model, "full-rank", 0, types), grams, new CompressionOptions());
        double rel = TensorAssert.RelativeError(Logits(model, ids), reference);
        Assert.True(rel < 1e-5, $"relative error {rel:E2}");
    }

    [Fact]
    public void WhitenedSvdErrorIsTheDiscardedSpectrumAndRefitDoesNotIncreaseIt()
    {
        var gen = new Generator(5);
        var x = torch.randn([200, 6], dtype: ScalarType.Float64, generator: gen).matmul(torch.randn([6, 6], dtype: ScalarType.Float64, generator: gen));
        var gram = x.t().matmul(x);
        var w = new[] { torch.randn([6, 4], dtype: ScalarType.Float64, generator: gen), torch.randn([6, 4], dtype: ScalarType.Float64, generator: gen) };
        var g = SharedBasis.Compute(w, gram.MulScalar(2L), rank: 3); // both layers see the same inputs here
        double err = Enumerable.Range(0, 2).Sum(i => x.matmul(w[i].sub(g.Basis.matmul(g.Coefficients[i]))).PowScalar(2).sum().item<double>());
        double discarded = g.SingularValues.Skip(3).Sum(s => s * s);
        Assert.Equal(discarded, 2 * err, 1e-8 * discarded);
        for (int i = 0; i < 2; i++)
        {
            var refit = SharedBasis.Refit(g.Basis, w[i], gram);
            double before = x.matmul(w[i].sub(g.Basis.matmul(g.Coefficients[i]))).PowScalar(2).sum().item<double>();
            double after = x.matmul(w[i].sub(g.Basis.matmul(refit))).PowScalar(2).sum().item<double>();
            Assert.True(after <= before * (1 + 1e-10));
        }
        var full = SharedBasis.Compute(w, gram, rank: 6);
        Assert.True(full.Basis.matmul(full.Coefficients[1]).sub(w[1]).abs().max().item<double>() < 1e-9);
    }

    [Fact]
    public void SaveThenLoadGivesIdenticalLogitsAndTheSamePlan()
    {
        using var tmp = new TempDir();
        var model = ModelLoader.Load(Repo.Gpt2);
        var ids = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors")).Read("input_ids");
        using var grams = FakeGrams(model);
        var plan = Baselines.Create("cycle", model, 0.4, new BaselineOptions(), grams);
        var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions());
        var before = Logits(model, ids);
        string dir = tmp.File("out");
        CompressedCheckpoint.Save(model, plan, Repo.Gpt2, dir, report, saveDType: ScalarType.Float32); // float32: the model's own numbers (the default, F16, is DtypeTests')
        var loaded = ModelFolder.Load(dir);
        Assert.Equal(0.0, TensorAssert.RelativeError(Logits(loaded, ids), before));
        Assert.Equal(model.ParameterCount(), loaded.ParameterCount());
        Assert.Equal(plan.ToJson(), SharingPlan.Load(Path.Combine(dir, CompressedCheckpoint.PlanFile)).ToJson());
        var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        Assert.Equal(model.ParameterCount(), file.Entries.Values.Sum(e => e.Elements)); // each shared tensor stored once
        Assert.True(File.Exists(Path.Combine(dir, "tokenizer.json")));
        Assert.Throws<BadInputException>(() => CompressedCheckpoint.Save(model, plan, Repo.Gpt2, dir, report)); // never overwrites
    }

    public static IEnumerable<object[]> BadPlans() =>
    [
        ["num_layers", (Func<SharingPlan, SharingPlan>)(p => p with { NumLayers = 11 }), "plan has 11 layers, the model has 12"],
        ["shape", (Func<SharingPlan, SharingPlan>)(p => p with { Shapes = new(p.Shapes) { ["mlp.c_fc"] = [256, 512] } }), "type 'mlp.c_fc' is 256×512 in the plan, 256×1024 in the model"],
        ["rank", (Func<SharingPlan, SharingPlan>)(p => p with { Types = new(p.Types) { ["attn.c_proj"] = p.Types["attn.c_proj"] with { Ranks = p.Types["attn.c_proj"].Ranks!.Select((r, i) => i == 2 ? 999 : r).ToArray() } } }), "rank 999 of color 2 is outside 1..256"],
        ["rank count", (Func<SharingPlan, SharingPlan>)(p => p with { Types = new(p.Types) { ["attn.c_proj"] = p.Types["attn.c_proj"] with { Ranks = [10] } } }), "need 6 ranks, got 1"],
        ["canonical", (Func<SharingPlan, SharingPlan>)(p => p with { Types = new(p.Types) { ["mlp.c_fc"] = p.Types["mlp.c_fc"] with { Coloring = [1, 1, 0, 0, 2, 2, 3, 3, 4, 4, 5, 5] } } }), "is not canonical"],
        ["type", (Func<SharingPlan, SharingPlan>)(p => p with { Types = new(p.Types) { ["mlp.c_gate"] = p.Types["mlp.c_fc"] } }), "unknown matrix type 'mlp.c_gate'"],
    ];

    [Theory]
    [MemberData(nameof(BadPlans))]
    public void PlanFilesThatDoNotFitTheModelAreRejected(string what, Func<SharingPlan, SharingPlan> damage, string message)
    {
        using var tmp = new TempDir();
        var model = ModelLoader.Load(Repo.Gpt2);
        var good = Baselines.Create("adjacent", model, 0.3, new BaselineOptions());
        string path = tmp.File(what + ".json");
        damage(good).Save(path);
        var e = Assert.Throws<BadInputException>(() => SharingPlan.Load(path).Validate(model, path));
        Assert.StartsWith(path + ":", e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void HeuristicColoringsFollowTheirDefinitions()
    {
        var model = ModelLoader.Load(Repo.Gpt2);
        var o = new BaselineOptions { UniqueBlocks = 4 };
        Assert.Equal([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], Baselines.Coloring("adjacent", model, "mlp.c_fc", o, null));
        Assert.Equal([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], Baselines.Coloring("sequence", model, "mlp.c_fc", o, null));
        Assert.Equal([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3], Baselines.Coloring("cycle", model, "mlp.c_fc", o, null));
        Assert.Equal([0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3], Baselines.Coloring("cycle-rev", model, "mlp.c_fc", o, null));
        Assert.Equal([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2], Baselines.Coloring("sandwich", model, "mlp.c_fc", o, null));
        Assert.Equal(new int[12], Baselines.Coloring("all", model, "mlp.c_fc", o, null));
        var random = Baselines.RandomGroups(12, 2, 4);
        Assert.Equal(random, Baselines.RandomGroups(12, 2, 4));
        Assert.All(random.GroupBy(c => c), g => Assert.Equal(2, g.Count()));
        Assert.True(SharingPlan.IsCanonical(SharingPlan.Canonical([3, 3, 1, 0, 1])));
        Assert.Equal([0, 0, 1, 2, 1], SharingPlan.Canonical([3, 3, 1, 0, 1]));
    }
}
