using System.Diagnostics;
using GeoShare;
using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;
using TorchSharp;

/// <summary>
/// What each part of Geo-Sharing buys (issue 16). Against Basis Sharing, geo changes three things at once: which layers
/// share (the coloring), how many ranks each group gets, and the curvature-aligned coefficients. At each ratio, at equal
/// budgets: svd; adjacent (Basis Sharing); geo's ranks with no sharing (groups of one); geo's coloring with Basis
/// Sharing's uniform ranks (geo's coefficients); geo's coloring and ranks with Basis Sharing's coefficients; full geo.
/// Everything as `geoshare compress` does it (64 calibration windows every 16th, K-FAC on 4 windows, refit from 0.4);
/// test perplexity on the first windows of the test split and on an out-of-domain text. One cell per model and ratio
/// (bench/results/ablation/MODEL-RATIO.json), so an interrupted run resumes.
/// </summary>
static class Ablation
{
    public static readonly string[] Variants = ["svd", "adjacent", "geo-ranks-no-sharing", "geo-coloring-uniform-ranks", "geo-basis-sharing-coefficients", "geo"];

    /// <summary>
    /// The planner the first cells measured (rank options at kept fractions 1 − ratio ± 0.1, ± 0.2), fixed here so that every
    /// cell's six variants are the same planner whatever the library's default; the improved planner
    /// (<see cref="PlannerOptions.WideKeptOffsets"/>) is measured in a second cell per ratio (MODEL-RATIO-improved.json).
    /// </summary>
    static readonly double[] FirstOffsets = [-0.2, -0.1, 0, 0.1, 0.2];

    public static int Run(string modelName, string cellsDir, string outOfDomain, int testWindows, double[] ratios)
    {
        string dir = modelName switch
        {
            "gpt2" => "assets/models/gpt2-kjv-brown",
            "llama" => "assets/models/llama-kjv-brown",
            _ => throw new UsageException("model", $"unknown model '{modelName}' (gpt2, llama)"),
        };
        if (!File.Exists(outOfDomain)) throw BadInputException.For(outOfDomain, "not found (the out-of-domain text)");
        Directory.CreateDirectory(cellsDir);
        var todo = ratios.Where(r => !File.Exists(CellPath(cellsDir, modelName, r)) || !File.Exists(CellPath(cellsDir, modelName, r, "-improved"))).ToList();
        if (todo.Count == 0) { Log("every cell exists"); return 0; }

        var total = Stopwatch.StartNew();
        var tokenizer = ByteLevelBpeTokenizer.Load(dir);
        var valid = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
        var test = TokenWindows.FromFile("assets/data/corpus/test.txt", tokenizer, 256);
        var ood = TokenWindows.FromFile(outOfDomain, tokenizer, 256);
        var testSelection = Enumerable.Range(0, Math.Min(testWindows, test.Count)).ToArray();
        var dense = ModelLoader.Load(dir);
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(64, 16));
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites);
        using var batch = LanguageModelBatch.FromWindows(valid, valid.Select(4, 1));
        var sw = Stopwatch.StartNew();
        var curvature = BlockCurvatureModel.Collect(dense, batch, grams, new PlannerOptions { Ratio = todo[0] }, null);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        var denseScore = Score(dense, test, testSelection, ood);
        Log($"{modelName} dense: test {denseScore.Test:F4}, out-of-domain {denseScore.OutOfDomain:F4}; curvature {curvatureSeconds:F0} s");

        foreach (double ratio in todo)
        {
            if (!File.Exists(CellPath(cellsDir, modelName, ratio)))
                FirstCell(modelName, dir, cellsDir, ratio, dense, grams, batch, curvature, calibration, test, testSelection, ood, denseScore, curvatureSeconds);
            if (!File.Exists(CellPath(cellsDir, modelName, ratio, "-improved")))
                ImprovedCell(modelName, dir, cellsDir, ratio, dense, grams, batch, curvature, calibration, test, testSelection, ood, denseScore, curvatureSeconds);
        }
        foreach (var c in curvature.Values) c.Dispose();
        Log($"done in {total.Elapsed.TotalSeconds:F0} s");
        return 0;
    }

    /// <summary>The six variants of the first planner (<see cref="FirstOffsets"/>).</summary>
    static void FirstCell(string modelName, string dir, string cellsDir, double ratio, PretrainedModel dense, ActivationGrams grams, LanguageModelBatch batch,
        IReadOnlyDictionary<string, BlockCurvatureModel> curvature, CalibrationSet calibration, TokenWindows test, int[] testSelection, TokenWindows ood,
        (double Test, double OutOfDomain) denseScore, double curvatureSeconds)
    {
        var cellWatch = Stopwatch.StartNew();
        // The first planner left out fractions above 0.98 (the library lowers them to 0.98 now).
        var first = new PlannerOptions { Ratio = ratio, KeptOffsets = FirstOffsets.Where(d => Math.Round(1 - ratio + d, 6) <= GeoPlanner.MaxKeptFraction).ToArray() };
        var geo = GeoPlanner.Plan(dense, grams, batch, first, null, curvature);
        var alone = GeoPlanner.Plan(dense, grams, batch, first with { MaxGroupSize = 1 }, null, curvature);
        // geo's coloring, every group's rank from Basis Sharing's formula for its size (the budget adjacent pairs get)
        var uniform = geo.Plan with
        {
            Method = "geo-coloring-uniform-ranks",
            Types = geo.Plan.Types.ToDictionary(kv => kv.Key, kv => kv.Value.Mode == SharingMode.Basis
                ? Baselines.WithRanks(dense, kv.Key, kv.Value.Coloring, SharingMode.Basis, ratio) : kv.Value),
        };
        var plans = new (string Label, SharingPlan Plan, ICoefficientSolver? Solver)[]
        {
            ("svd", Baselines.Create("svd", dense, ratio, new BaselineOptions(), grams), null),
            ("adjacent", Baselines.Create("adjacent", dense, ratio, new BaselineOptions(), grams), null),
            ("geo-ranks-no-sharing", alone.Plan, new CurvatureAlignedSolver(alone.Costs)),
            ("geo-coloring-uniform-ranks", uniform, new CurvatureAlignedSolver(geo.Costs)),
            ("geo-basis-sharing-coefficients", geo.Plan, null),
            ("geo", geo.Plan, new CurvatureAlignedSolver(geo.Costs)),
        };
        var rows = Measure(modelName, dir, ratio, plans, grams, calibration, test, testSelection, ood);
        geo.Dispose();
        alone.Dispose();
        WriteCell(CellPath(cellsDir, modelName, ratio), "ablation", modelName, dir, ratio, calibration, batch, testSelection, ood, denseScore, rows,
            curvatureSeconds, cellWatch.Elapsed.TotalSeconds, null);
    }

    /// <summary>The improved planner (`--kept-offsets wide`): its ranks with no sharing, and the whole of it.</summary>
    static void ImprovedCell(string modelName, string dir, string cellsDir, double ratio, PretrainedModel dense, ActivationGrams grams, LanguageModelBatch batch,
        IReadOnlyDictionary<string, BlockCurvatureModel> curvature, CalibrationSet calibration, TokenWindows test, int[] testSelection, TokenWindows ood,
        (double Test, double OutOfDomain) denseScore, double curvatureSeconds)
    {
        var cellWatch = Stopwatch.StartNew();
        var defaults = new PlannerOptions { Ratio = ratio, KeptOffsets = PlannerOptions.WideKeptOffsets };
        using var geo = GeoPlanner.Plan(dense, grams, batch, defaults, null, curvature);
        using var alone = GeoPlanner.Plan(dense, grams, batch, defaults with { MaxGroupSize = 1 }, null, curvature);
        var plans = new (string Label, SharingPlan Plan, ICoefficientSolver? Solver)[]
        {
            ("geo-improved-ranks-no-sharing", alone.Plan, new CurvatureAlignedSolver(alone.Costs)),
            ("geo-improved", geo.Plan, new CurvatureAlignedSolver(geo.Costs)),
        };
        var rows = Measure(modelName, dir, ratio, plans, grams, calibration, test, testSelection, ood);
        WriteCell(CellPath(cellsDir, modelName, ratio, "-improved"), "ablation-improved", modelName, dir, ratio, calibration, batch, testSelection, ood,
            denseScore, rows, curvatureSeconds, cellWatch.Elapsed.TotalSeconds, defaults.KeptOffsets);
    }

    /// <summary>One cell's JSON: what was measured, on which data, and how long it took.</summary>
    static void WriteCell(string path, string benchmark, string modelName, string dir, double ratio, CalibrationSet calibration, LanguageModelBatch batch,
        int[] testSelection, TokenWindows ood, (double Test, double OutOfDomain) denseScore, List<AblationRow> rows, double curvatureSeconds,
        double cellSeconds, double[]? keptOffsets)
    {
        JsonOutput.Write(path, new AblationCell(benchmark, modelName, dir, ratio, calibration.Description, batch.Description,
            $"first {testSelection.Length} windows of test.txt", $"{ood.Count} windows of {Path.GetFileName(ood.Source)}", denseScore.Test,
            denseScore.OutOfDomain, rows, curvatureSeconds, cellSeconds, torch.get_num_threads())
        {
            KeptOffsets = keptOffsets,
        });
    }

    /// <summary>
    /// Experiment: plan, compress (with its refit), measure every projection's inputs on that compressed model, plan again
    /// with those second moments as the metric (K-FAC's A; G of the dense model), compress again on them. Logs only.
    /// </summary>
    public static int TwoPass(string modelName, double ratio, int testWindows)
    {
        string dir = modelName == "gpt2" ? "assets/models/gpt2-kjv-brown" : "assets/models/llama-kjv-brown";
        var tokenizer = ByteLevelBpeTokenizer.Load(dir);
        var valid = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
        var test = TokenWindows.FromFile("assets/data/corpus/test.txt", tokenizer, 256);
        var ood = TokenWindows.FromFile("assets/data/out-of-domain/gpl-3.txt", tokenizer, 256);
        var testSelection = Enumerable.Range(0, Math.Min(testWindows, test.Count)).ToArray();
        using var dense = ModelLoader.Load(dir);
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(64, 16));
        using var grams = ActivationGrams.Collect(dense, calibration, dense.Sites);
        using var batch = LanguageModelBatch.FromWindows(valid, valid.Select(4, 1));
        var o = new PlannerOptions { Ratio = ratio };
        var curvature = BlockCurvatureModel.Collect(dense, batch, grams, o, null);
        using var first = GeoPlanner.Plan(dense, grams, batch, o, null, curvature);
        using var once = ModelLoader.Load(dir);
        PlanCompressor.Apply(once, first.Plan, grams, new CompressionOptions { Coefficients = new CurvatureAlignedSolver(first.Costs) }, calibration);
        var s1 = Score(once, test, testSelection, ood);
        Log($"{modelName} {ratio} one pass: predicted {first.Search.Objective:G6}, test {s1.Test:F4}, out-of-domain {s1.OutOfDomain:F4}, {SharingPlan.DescribeGroupSizes(first.Plan.GroupSizes())}");
        using var fed = ActivationGrams.Collect(once, calibration, dense.Sites);
        var curvature2 = BlockCurvatureModel.Collect(dense, batch, fed, o, null);
        using var second = GeoPlanner.Plan(dense, fed, batch, o, null, curvature2);
        using var twice = ModelLoader.Load(dir);
        PlanCompressor.Apply(twice, second.Plan, fed, new CompressionOptions { Coefficients = new CurvatureAlignedSolver(second.Costs) }, calibration);
        var s2 = Score(twice, test, testSelection, ood);
        Log($"{modelName} {ratio} two passes: predicted {second.Search.Objective:G6}, test {s2.Test:F4}, out-of-domain {s2.OutOfDomain:F4}, {SharingPlan.DescribeGroupSizes(second.Plan.GroupSizes())}");
        foreach (var c in curvature.Values.Concat(curvature2.Values)) c.Dispose();
        return 0;
    }

    /// <summary>Each plan compressed on a fresh copy of the model (its refit as compress does it) and scored.</summary>
    static List<AblationRow> Measure(string modelName, string dir, double ratio, (string Label, SharingPlan Plan, ICoefficientSolver? Solver)[] plans,
        ActivationGrams grams, CalibrationSet calibration, TokenWindows test, int[] testSelection, TokenWindows ood)
    {
        var rows = new List<AblationRow>();
        foreach (var (label, plan, solver) in plans)
        {
            using var model = ModelLoader.Load(dir);
            var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Coefficients = solver }, calibration);
            var s = Score(model, test, testSelection, ood);
            rows.Add(new AblationRow(label, report.Ratio, report.MatrixParametersAfter, report.Refitted, s.Test, s.OutOfDomain, plan.GroupSizes()));
            Log($"{modelName} {ratio} {label}: achieved {report.Ratio:F4}, test {s.Test:F4}, out-of-domain {s.OutOfDomain:F4}");
        }
        return rows;
    }

    static string CellPath(string dir, string model, double ratio, string suffix = "") =>
        Path.Combine(dir, $"{model}-{ratio.ToString("0.0##", System.Globalization.CultureInfo.InvariantCulture)}{suffix}.json");

    static (double Test, double OutOfDomain) Score(PretrainedModel model, TokenWindows test, int[] testSelection, TokenWindows ood) =>
        (Evaluator.Perplexity(model, test, windows: testSelection).Perplexity, Evaluator.Perplexity(model, ood).Perplexity);

    static void Log(string s) => Console.Error.WriteLine($"[ablation] {s}");

    record AblationRow(string Variant, double AchievedRatio, long MatrixParameters, bool Refitted, double TestPerplexity, double OutOfDomainPerplexity,
        SortedDictionary<int, int> GroupSizes);
    record AblationCell(string Benchmark, string Model, string ModelDir, double Ratio, string Calibration, string CurvatureBatch, string TestWindows,
        string OutOfDomain, double DenseTestPerplexity, double DenseOutOfDomainPerplexity, IReadOnlyList<AblationRow> Rows, double CurvatureSeconds,
        double CellSeconds, int Threads)
    {
        /// <summary>The planner's rank options (the improved cells; the first cells' are <see cref="FirstOffsets"/>).</summary>
        public double[]? KeptOffsets { get; init; }
    }
}
