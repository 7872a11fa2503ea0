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
        var todo = ratios.Where(r => !File.Exists(CellPath(cellsDir, modelName, r))).ToList();
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
            var cellWatch = Stopwatch.StartNew();
            var geo = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio }, null, curvature);
            var alone = GeoPlanner.Plan(dense, grams, batch, new PlannerOptions { Ratio = ratio, MaxGroupSize = 1 }, null, curvature);
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
            var rows = new List<AblationRow>();
            foreach (var (label, plan, solver) in plans)
            {
                var model = ModelLoader.Load(dir);
                var report = PlanCompressor.Apply(model, plan, grams, new CompressionOptions { Coefficients = solver }, calibration);
                var s = Score(model, test, testSelection, ood);
                rows.Add(new AblationRow(label, report.Ratio, report.MatrixParametersAfter, report.Refitted, s.Test, s.OutOfDomain,
                    plan.GroupSizes()));
                Log($"{modelName} {ratio} {label}: achieved {report.Ratio:F4}, test {s.Test:F4}, out-of-domain {s.OutOfDomain:F4}");
                model.Dispose();
            }
            geo.Dispose();
            alone.Dispose();
            JsonOutput.Write(CellPath(cellsDir, modelName, ratio), new AblationCell("ablation", modelName, dir, ratio, calibration.Description, batch.Description,
                $"first {testSelection.Length} windows of test.txt", $"{ood.Count} windows of {Path.GetFileName(outOfDomain)}", denseScore.Test, denseScore.OutOfDomain,
                rows, curvatureSeconds, cellWatch.Elapsed.TotalSeconds, torch.get_num_threads()));
        }
        foreach (var c in curvature.Values) c.Dispose();
        Log($"done in {total.Elapsed.TotalSeconds:F0} s");
        return 0;
    }

    static string CellPath(string dir, string model, double ratio) =>
        Path.Combine(dir, $"{model}-{ratio.ToString("0.0##", System.Globalization.CultureInfo.InvariantCulture)}.json");

    static (double Test, double OutOfDomain) Score(PretrainedModel model, TokenWindows test, int[] testSelection, TokenWindows ood) =>
        (Evaluator.Perplexity(model, test, windows: testSelection).Perplexity, Evaluator.Perplexity(model, ood).Perplexity);

    static void Log(string s) => Console.Error.WriteLine($"[ablation] {s}");

    record AblationRow(string Variant, double AchievedRatio, long MatrixParameters, bool Refitted, double TestPerplexity, double OutOfDomainPerplexity,
        SortedDictionary<int, int> GroupSizes);
    record AblationCell(string Benchmark, string Model, string ModelDir, double Ratio, string Calibration, string CurvatureBatch, string TestWindows,
        string OutOfDomain, double DenseTestPerplexity, double DenseOutOfDomainPerplexity, IReadOnlyList<AblationRow> Rows, double CurvatureSeconds,
        double CellSeconds, int Threads);
}
