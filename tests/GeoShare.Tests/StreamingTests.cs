using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// The layer-wise path (one layer resident at a time) against the in-memory one on the bundled models: the same compressed
/// checkpoint, the same logits, the same perplexity.
/// </summary>
public class StreamingTests
{
    private static double RelativeError(Tensor a, Tensor b)
    {
        using var d = a.sub(b);
        using var dn = d.norm().to_type(ScalarType.Float64);
        using var bn = b.norm().to_type(ScalarType.Float64);
        return dn.item<double>() / bn.item<double>();
    }

    private static Tensor Logits(PretrainedModel m, Tensor ids) { using var _ = torch.no_grad(); return m.call(ids); }

    [Theory]
    [InlineData("gpt2-kjv-brown", "adjacent", 0.3, "basis")]
    [InlineData("llama-kjv-brown", "adjacent", 0.3, "basis")]
    [InlineData("gpt2-kjv-brown", "all", 0.3, "tie")]
    public void StreamedCompressionGivesTheInMemoryCheckpointAndLogits(string name, string method, double ratio, string mode)
    {
        string dir = Repo.Model(name);
        using var tmp = new TempDir();
        var windows = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(dir), 256);
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(4, 16));
        var options = new BaselineOptions { Mode = mode == "tie" ? SharingMode.Tie : SharingMode.Basis };

        // In memory: the whole model, PlanCompressor, CompressedCheckpoint.Save.
        string inMemory = tmp.File("in-memory");
        var model = ModelLoader.Load(dir);
        SharingPlan plan;
        using (var grams = ActivationGrams.Collect(model, calibration, model.Sites))
        {
            plan = Baselines.Create(method, model, ratio, options);
            PlanCompressor.Apply(model, plan, grams, new CompressionOptions(), calibration);
            CompressedCheckpoint.Save(model, plan, dir, inMemory);
        }
        model.Dispose();

        // Layer by layer: grams spilled to disk, groups compressed from the checkpoint straight into the output.
        string streamed = tmp.File("streamed");
        using (var stream = LayerStream.OpenDense(dir))
        {
            var streamPlan = Baselines.Create(method, stream.Shell, ratio, options);
            Assert.Equal(plan.ToJson(), streamPlan.ToJson());
            using var grams = SpilledGrams.Collect(stream, calibration, StreamingCompressor.SitesNeeded(stream.Shell, streamPlan), tmp.File("grams"));
            using var spill = new SafetensorsSpill(tmp.File("spill"));
            var stored = CompressedCheckpoint.DefaultSaveDType(stream.Shell);
            StreamingCompressor.Compress(stream, streamPlan, grams, new CompressionOptions(), spill, stored);
            CompressedCheckpoint.Save(spill, streamPlan, dir, streamed);
        }

        var test = TokenWindows.FromFile(Repo.Corpus("test"), ByteLevelBpeTokenizer.Load(dir), 256);
        using var a = ModelFolder.Load(inMemory);
        using var b = ModelFolder.Load(streamed);
        AssertSameLogits(a, b, test);
        // Same operations on the same numbers: the files agree byte for byte.
        Assert.Equal(File.ReadAllBytes(Path.Combine(inMemory, Checkpoint.SingleFile)), File.ReadAllBytes(Path.Combine(streamed, Checkpoint.SingleFile)));

        // Streamed evaluation of the compressed folder: the in-memory perplexity.
        var selection = Enumerable.Range(0, 4).ToArray();
        var full = Evaluator.Perplexity(a, test, windows: selection);
        using var evalStream = CompressedCheckpoint.OpenStream(streamed);
        var layered = Evaluator.Perplexity(evalStream, test, windows: selection, hiddenBudgetBytes: 1);
        Assert.True(Math.Abs(layered.MeanNll - full.MeanNll) <= 1e-5 * full.MeanNll, $"streamed NLL {layered.MeanNll} vs {full.MeanNll}");
        Assert.Equal(a.ParameterCount(), layered.Parameters);
    }

    [Theory]
    [InlineData("gpt2-kjv-brown")]
    [InlineData("llama-kjv-brown")]
    public void StreamedDenseLogitsAndGramsEqualTheWholeModels(string name)
    {
        string dir = Repo.Model(name);
        using var tmp = new TempDir();
        var windows = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(dir), 256);
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(3, 16));
        using var model = ModelLoader.Load(dir);
        using var stream = LayerStream.OpenDense(dir);

        using var ids = windows.Batch([0, 1]);
        using var full = Logits(model, ids);
        var (hidden, contexts) = stream.Run([ids]);
        using var layered = Logits(stream, hidden[0]);
        Assert.True(RelativeError(layered, full) <= 1e-6, $"streamed dense logits differ by {RelativeError(layered, full):G3}");
        hidden[0].Dispose();
        contexts[0].Dispose();

        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        using var spilled = SpilledGrams.Collect(stream, calibration, stream.Shell.Sites, tmp.File("grams"));
        Assert.Equal(grams.Rows, spilled.Rows);
        foreach (var site in model.Sites)
        {
            using var g = spilled.Gram(site.Name);
            Assert.True(RelativeError(g, grams[site.Name]) <= 1e-12, $"{site.Name}: gram differs by {RelativeError(g, grams[site.Name]):G3}");
        }
        // q, k and v (and gate, up) read one input: one gram stored for each such set.
        int files = Directory.GetFiles(tmp.File("grams")).Length;
        Assert.Equal(model.Config.NumLayers, files);
        // In memory too they share one gram, which is each one's own: every type collected alone (nothing to share with)
        // gives the same numbers.
        foreach (var type in model.Sites.Select(s => s.Type).Distinct())
        {
            var alone = model.Sites.Where(s => s.Type == type).ToList();
            using var own = ActivationGrams.Collect(model, calibration, alone);
            foreach (var site in alone)
                Assert.True(RelativeError(own[site.Name], grams[site.Name]) == 0, $"{site.Name}: the shared gram is not its own");
        }
    }

    /// <summary>
    /// Geo-Sharing layer by layer (grams spilled, weights read from the checkpoint per group, K-FAC swept over the streamed
    /// layers) against the whole model: the same coloring and ranks, the same predicted ΔL, and compressed logits within
    /// 1e-5 relative, with the coefficient refit on both (the streamed one layer by layer). Consecutive groups only, so
    /// that the test costs a few dozen groups.
    /// </summary>
    [Theory]
    [InlineData("gpt2-kjv-brown")]
    [InlineData("llama-kjv-brown")]
    public void StreamedGeoPlanAndCompressionEqualTheInMemoryOnes(string name)
    {
        string dir = Repo.Model(name);
        using var tmp = new TempDir();
        var windows = TokenWindows.FromFile(Repo.Corpus("valid"), ByteLevelBpeTokenizer.Load(dir), 256);
        var calibration = CalibrationSet.FromWindows(windows, windows.Select(4, 16));
        var o = new PlannerOptions { Ratio = 0.3, Curvature = CurvatureMethod.Kfac, Contiguous = true, Costing = CostingMethod.Full };

        string inMemory = tmp.File("in-memory");
        var model = ModelLoader.Load(dir);
        SharingPlan plan;
        double[] predicted;
        using (var grams = ActivationGrams.Collect(model, calibration, model.Sites))
        using (var batch = LanguageModelBatch.FromWindows(windows, windows.Select(2, 1)))
        using (var r = GeoPlanner.Plan(model, grams, batch, o))
        {
            plan = r.Plan;
            predicted = r.Search.Groups.OrderBy(g => g.Type).ThenBy(g => g.Layers[0]).Select(g => g.Option.Predicted).ToArray();
            var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Refit = true, Coefficients = new CurvatureAlignedSolver(r.Costs) }, calibration);
            Assert.True(report.Refitted);
            CompressedCheckpoint.Save(model, plan, dir, inMemory);
        }
        model.Dispose();

        string streamed = tmp.File("streamed");
        using (var stream = LayerStream.OpenDense(dir))
        using (var grams = SpilledGrams.Collect(stream, calibration, stream.Shell.Sites, tmp.File("grams")))
        using (var batch = LanguageModelBatch.FromWindows(windows, windows.Select(2, 1)))
        using (var r = GeoPlanner.Plan(PlanningInputs.Streamed(stream, grams), batch, o))
        {
            Assert.Equal(plan.ToJson(), r.Plan.ToJson());
            var p = r.Search.Groups.OrderBy(g => g.Type).ThenBy(g => g.Layers[0]).Select(g => g.Option.Predicted).ToArray();
            Assert.Equal(predicted.Length, p.Length);
            for (int i = 0; i < p.Length; i++)
                Assert.True(Math.Abs(p[i] - predicted[i]) <= 1e-9 * Math.Max(1e-12, Math.Abs(predicted[i])), $"group {i}: predicted ΔL {p[i]} streamed, {predicted[i]} in memory");
            using var spill = new SafetensorsSpill(tmp.File("spill"));
            var report = StreamingCompressor.Compress(stream, r.Plan, grams, new CompressionOptions { Refit = true, Coefficients = new CurvatureAlignedSolver(r.Costs) },
                spill, CompressedCheckpoint.DefaultSaveDType(stream.Shell), calibration: calibration, refitSpill: tmp.File("refit"));
            Assert.True(report.Refitted);
            Assert.False(File.Exists(tmp.File("refit")));
            CompressedCheckpoint.Save(spill, r.Plan, dir, streamed);
        }

        var test = TokenWindows.FromFile(Repo.Corpus("test"), ByteLevelBpeTokenizer.Load(dir), 256);
        using var a = ModelFolder.Load(inMemory);
        using var b = ModelFolder.Load(streamed);
        AssertSameLogits(a, b, test);
    }

    /// <summary>The in-memory and the streamed compressed model's logits on two test windows agree within 1e-5 relative.</summary>
    private static void AssertSameLogits(PretrainedModel a, PretrainedModel b, TokenWindows test)
    {
        using var ids = test.Batch([0, 1]);
        using var la = Logits(a, ids);
        using var lb = Logits(b, ids);
        Assert.True(RelativeError(lb, la) <= 1e-5, $"streamed compressed logits differ by {RelativeError(lb, la):G3} relative");
    }

    private static Tensor Logits(LayerStream stream, Tensor hidden) { using var _ = torch.no_grad(); return stream.Parts.Head(hidden); }
}
