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
/// `screening MODEL_DIR JSON_OUT RATIO...`: Geo-Sharing plans with full and with screened costing on the same
/// calibration and K-FAC curvature (collected once: the curvature does not depend on the ratio), the defaults of
/// `compress --method geo` otherwise. Where the two plans differ, the screened one is compressed (curvature-aligned
/// coefficients, the refit from 0.4 as `compress` does) and evaluated on the test split; identical plans give the
/// same compressed model, so their perplexity is the full plan's (bench/results/sharing/*-geo-R.json).
/// </summary>
internal static class Screening
{
    public static int Run(string modelDir, string jsonOut, double[] ratios)
    {
        void Log(string s) => Console.Error.WriteLine($"[{DateTime.UtcNow:HH:mm:ss}] {s}");
        var total = Stopwatch.StartNew();
        var model = ModelFolder.Load(modelDir);
        var tokenizer = ByteLevelBpeTokenizer.Load(modelDir);
        var valid = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
        var test = TokenWindows.FromFile("assets/data/corpus/test.txt", tokenizer, 256);
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(64, 16));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        using var batch = LanguageModelBatch.FromWindows(valid, valid.Select(4, 1));
        var sw = Stopwatch.StartNew();
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, new PlannerOptions { Ratio = ratios[0] }, null);
        Log($"calibration and curvature {total.Elapsed.TotalSeconds:F0} s (curvature {sw.Elapsed.TotalSeconds:F0} s)");
        var rows = new List<object>();
        foreach (double ratio in ratios)
        {
            var plans = new Dictionary<string, (PlannerResult R, double Seconds)>();
            foreach (var costing in new[] { CostingMethod.Full, CostingMethod.Screened })
            {
                sw.Restart();
                var r = GeoPlanner.Plan(model, grams, batch, new PlannerOptions { Ratio = ratio, Costing = costing }, curvature: curvature);
                plans[costing.ToString().ToLowerInvariant()] = (r, sw.Elapsed.TotalSeconds);
                Log($"ratio {ratio} {costing}: ΔL {r.Search.Objective:G6}, {r.AllowedGroups} allowed, {r.ScreenedGroups} screened, {r.CandidateGroups} costed, " +
                    $"{sw.Elapsed.TotalSeconds:F0} s (screen {r.ScreenSeconds:F1} s, costs {r.CostSeconds:F0} s)");
            }
            var (full, fullSeconds) = plans["full"];
            var (screened, screenedSeconds) = plans["screened"];
            bool same = full.Plan.Types.All(t => screened.Plan.Types.TryGetValue(t.Key, out var s)
                && s.Coloring.SequenceEqual(t.Value.Coloring) && (s.Ranks ?? []).SequenceEqual(t.Value.Ranks ?? []));
            double? screenedPerplexity = null;
            if (!same)
            {
                sw.Restart();
                var copy = ModelFolder.Load(modelDir);
                PlanCompressor.Apply(copy, screened.Plan, grams, new CompressionOptions { Coefficients = new CurvatureAlignedSolver(screened.Costs) }, calibration);
                screenedPerplexity = Evaluator.Perplexity(copy, test).Perplexity;
                copy.Dispose();
                Log($"ratio {ratio} screened plan differs: test perplexity {screenedPerplexity:F4} ({sw.Elapsed.TotalSeconds:F0} s)");
            }
            rows.Add(new
            {
                ratio, full_objective = full.Search.Objective, screened_objective = screened.Search.Objective,
                relative_gap = (screened.Search.Objective - full.Search.Objective) / full.Search.Objective,
                same_plan = same, screened_test_perplexity = screenedPerplexity,
                allowed_groups = full.AllowedGroups, screened_groups = screened.ScreenedGroups, full_costed = full.CandidateGroups, screened_costed = screened.CandidateGroups,
                full_seconds = fullSeconds, screened_seconds = screenedSeconds, screen_seconds = screened.ScreenSeconds,
                full_cost_seconds = full.CostSeconds, screened_cost_seconds = screened.CostSeconds,
                full_groups = full.Search.Groups.Select(g => $"{g.Type}:{string.Join("+", g.Layers)}@{g.Option.Rank}").Order().ToList(),
                screened_groups_chosen = screened.Search.Groups.Select(g => $"{g.Type}:{string.Join("+", g.Layers)}@{g.Option.Rank}").Order().ToList(),
            });
            full.Dispose();
            screened.Dispose();
            JsonOutput.Write(jsonOut, new { benchmark = "screening", model = modelDir, threads = torch.get_num_threads(), allocator = NativeAllocator.Name, rows, wall_seconds = total.Elapsed.TotalSeconds });
        }
        foreach (var c in curvature.Values) c.Dispose();
        return 0;
    }
}
