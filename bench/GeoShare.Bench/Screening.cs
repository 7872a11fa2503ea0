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
/// `compress --method geo` otherwise. The full plan is made first and keeps its exact costs as cells in a temporary
/// folder; the screened plan reads the groups it costs from them (the same numbers; its exact-cost time is then
/// estimated as its costed groups × the full plan's mean seconds per group, the screen's bounds are timed as run).
/// Every allowed group's bounds are checked against its exact cost. Both plans are compressed (curvature-aligned
/// coefficients, the refit from 0.4 as `compress` does) and evaluated on the test split (once where they are the same).
/// </summary>
internal static class Screening
{
    /// <param name="partners">The screened plan's <see cref="PlannerOptions.ScreenPartners"/>.</param>
    /// <param name="evaluate">Compress and evaluate the plans (false: plans and bounds only).</param>
    public static int Run(string modelDir, string jsonOut, double[] ratios, int partners = 3, bool evaluate = true)
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
        string cellsRoot = Path.Combine(Path.GetTempPath(), $"geoshare-screening-{Environment.ProcessId}");
        try
        {
            foreach (double ratio in ratios)
            {
                var cells = new GroupCostCells(Path.Combine(cellsRoot, ratio.ToString("R", System.Globalization.CultureInfo.InvariantCulture)), "screening-bench");
                var plans = new Dictionary<CostingMethod, (PlannerResult R, double Seconds)>();
                foreach (var costing in new[] { CostingMethod.Full, CostingMethod.Screened })
                {
                    sw.Restart();
                    var r = GeoPlanner.Plan(model, grams, batch, new PlannerOptions { Ratio = ratio, Costing = costing, Cells = cells, ScreenPartners = partners }, curvature: curvature);
                    plans[costing] = (r, sw.Elapsed.TotalSeconds);
                    Log($"ratio {ratio} {costing}: ΔL {r.Search.Objective:G6}, {r.AllowedGroups} allowed, {r.ScreenedGroups} screened, {r.CandidateGroups} costed " +
                        $"({r.ScreenInitialGroups} first, {r.ScreenRounds} verify searches), {sw.Elapsed.TotalSeconds:F0} s (bounds {r.ScreenBoundSeconds:F1} s, " +
                        $"screen {r.ScreenSeconds:F1} s, costs {r.CostSeconds:F0} s, {r.CellGroups} groups from cells)");
                }
                var (full, fullSeconds) = plans[CostingMethod.Full];
                var (screened, screenedSeconds) = plans[CostingMethod.Screened];
                double perGroup = full.CostSeconds / full.CandidateGroups;
                var check = CheckBounds(model, grams, curvature, full, GeoPlanner.KeptFractions(new PlannerOptions { Ratio = ratio }));
                Log($"ratio {ratio} bounds: {check}");
                bool same = full.Plan.Types.All(t => screened.Plan.Types.TryGetValue(t.Key, out var s)
                    && s.Coloring.SequenceEqual(t.Value.Coloring) && (s.Ranks ?? []).SequenceEqual(t.Value.Ranks ?? []));
                double Perplexity(PlannerResult r)
                {
                    sw.Restart();
                    var copy = ModelFolder.Load(modelDir);
                    PlanCompressor.Apply(copy, r.Plan, grams, new CompressionOptions { Coefficients = new CurvatureAlignedSolver(r.Costs) }, calibration);
                    double p = Evaluator.Perplexity(copy, test).Perplexity;
                    copy.Dispose();
                    Log($"ratio {ratio} {r.Costing.Method}: test perplexity {p:F4} ({sw.Elapsed.TotalSeconds:F0} s)");
                    return p;
                }
                double? fullPerplexity = evaluate ? Perplexity(full) : null;
                double? screenedPerplexity = !evaluate ? null : same ? fullPerplexity : Perplexity(screened);
                rows.Add(new
                {
                    ratio, screen_partners = partners, full_objective = full.Search.Objective, screened_objective = screened.Search.Objective,
                    relative_gap = (screened.Search.Objective - full.Search.Objective) / full.Search.Objective,
                    same_plan = same, full_test_perplexity = fullPerplexity, screened_test_perplexity = screenedPerplexity,
                    allowed_groups = full.AllowedGroups, screened_groups = screened.ScreenedGroups, full_costed = full.CandidateGroups, screened_costed = screened.CandidateGroups,
                    screened_first_set = screened.ScreenInitialGroups, verify_searches = screened.ScreenRounds,
                    full_seconds = fullSeconds, full_cost_seconds = full.CostSeconds, full_seconds_per_group = perGroup,
                    screened_seconds_with_cells = screenedSeconds, screen_bound_seconds = screened.ScreenBoundSeconds,
                    screen_seconds_with_cells = screened.ScreenSeconds, screened_groups_from_cells = screened.CellGroups,
                    screened_cost_seconds_estimated = screened.CandidateGroups * perGroup,
                    bound_seconds_per_group = screened.ScreenBoundSeconds / Math.Max(1, screened.ScreenedGroups),
                    bounds = check,
                    full_groups = full.Search.Groups.Select(g => $"{g.Type}:{string.Join("+", g.Layers)}@{g.Option.Rank}").Order().ToList(),
                    screened_groups_chosen = screened.Search.Groups.Select(g => $"{g.Type}:{string.Join("+", g.Layers)}@{g.Option.Rank}").Order().ToList(),
                });
                full.Dispose();
                screened.Dispose();
                JsonOutput.Write(jsonOut, new { benchmark = "screening", model = modelDir, threads = torch.get_num_threads(), allocator = NativeAllocator.Name, rows, wall_seconds = total.Elapsed.TotalSeconds });
            }
        }
        finally
        {
            if (Directory.Exists(cellsRoot)) Directory.Delete(cellsRoot, recursive: true);
        }
        foreach (var c in curvature.Values) c.Dispose();
        return 0;
    }

    /// <summary>
    /// `screening-time MODEL_DIR JSON_OUT RATIO`: the screen's bounds of every allowed group of each shared type, timed, against
    /// the exact costing of the first 12 pairs of each type (same calibration and curvature as <see cref="Run"/>), one thread.
    /// </summary>
    public static int Time(string modelDir, string jsonOut, double ratio)
    {
        void Log(string s) => Console.Error.WriteLine($"[{DateTime.UtcNow:HH:mm:ss}] {s}");
        var total = Stopwatch.StartNew();
        var model = ModelFolder.Load(modelDir);
        var tokenizer = ByteLevelBpeTokenizer.Load(modelDir);
        var valid = TokenWindows.FromFile("assets/data/corpus/valid.txt", tokenizer, 256);
        var calibration = CalibrationSet.FromWindows(valid, valid.Select(64, 16));
        using var grams = ActivationGrams.Collect(model, calibration, model.Sites);
        using var batch = LanguageModelBatch.FromWindows(valid, valid.Select(4, 1));
        var o = new PlannerOptions { Ratio = ratio };
        var curvature = BlockCurvatureModel.Collect(model, batch, grams, o, null);
        Log($"calibration and curvature {total.Elapsed.TotalSeconds:F0} s");
        var kept = GeoPlanner.KeptFractions(o);
        var rows = new List<object>();
        int threads = torch.get_num_threads();
        torch.set_num_threads(1);
        using var costs = new GroupCostEvaluator(model, grams, curvature, o.Trust, o.UseGradient);
        foreach (var t in ShareableTypes.Default(model))
        {
            var groups = GeoPlanner.AllowedGroups(model, o)[t];
            var sw = Stopwatch.StartNew();
            GroupScreen.Bounds(model, grams, curvature, t, groups, n => costs.Ranks(t, n, kept));
            double bounds = sw.Elapsed.TotalSeconds;
            var sample = groups.Where(g => g.Length == 2).Take(12).ToList();
            sw.Restart();
            foreach (var g in sample) costs.Evaluate(t, g, costs.Ranks(t, g.Length, kept));
            double exact = sw.Elapsed.TotalSeconds;
            rows.Add(new { type = t, groups = groups.Count, bound_seconds = bounds, bound_seconds_per_group = bounds / groups.Count,
                exact_pairs = sample.Count, exact_seconds_per_pair = exact / sample.Count });
            Log($"{t}: bounds of {groups.Count} groups {bounds:F2} s ({1000 * bounds / groups.Count:F0} ms a group), exact {1000 * exact / sample.Count:F0} ms a pair");
        }
        torch.set_num_threads(threads);
        JsonOutput.Write(jsonOut, new { benchmark = "screening-time", model = modelDir, threads = 1, ratio, rows, wall_seconds = total.Elapsed.TotalSeconds });
        foreach (var c in curvature.Values) c.Dispose();
        return 0;
    }

    /// <summary>How the screen's bounds sit around the exact costs, over every (group of two or more, rank) the full plan costed.</summary>
    internal sealed record BoundCheck(int Options, int LowerAbove, int UpperBelow, double WorstLowerExcess, double WorstUpperShortfall,
        double MedianLowerOverExact, double MedianUpperOverExact)
    {
        public override string ToString() =>
            $"{Options} options: lower above exact {LowerAbove} (worst {WorstLowerExcess:G3} relative), upper below exact {UpperBelow} (worst {WorstUpperShortfall:G3}), " +
            $"median lower/exact {MedianLowerOverExact:F3}, upper/exact {MedianUpperOverExact:F3}";
    }

    private static BoundCheck CheckBounds(PretrainedModel model, ActivationGrams grams, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        PlannerResult full, double[] kept)
    {
        var lowerRatio = new List<double>();
        var upperRatio = new List<double>();
        int lowerAbove = 0, upperBelow = 0;
        double worstLower = 0, worstUpper = 0;
        foreach (var t in model.ProjectionTypes)
        {
            var groups = GeoPlanner.AllowedGroups(model, new PlannerOptions { Ratio = full.Plan.Ratio ?? 0.3 })[t];
            if (groups.All(g => g.Length == 1)) continue;
            var bounds = GroupScreen.Bounds(model, grams, curvature, t, groups, n => full.Costs.Ranks(t, n, kept));
            foreach (var b in bounds)
            {
                var exact = full.Costs.Evaluate(t, b.Layers, b.Ranks);
                for (int r = 0; r < b.Ranks.Length; r++)
                {
                    double e = exact.Options[r].Predicted;
                    lowerRatio.Add(b.Lower[r] / e);
                    upperRatio.Add(b.Upper[r] / e);
                    double over = (b.Lower[r] - e) / Math.Abs(e), under = (e - b.Upper[r]) / Math.Abs(e);
                    if (over > 1e-9) { lowerAbove++; worstLower = Math.Max(worstLower, over); }
                    if (under > 1e-9) { upperBelow++; worstUpper = Math.Max(worstUpper, under); }
                }
            }
        }
        static double Median(List<double> x) { var s = x.Order().ToList(); return s.Count == 0 ? double.NaN : s[s.Count / 2]; }
        return new BoundCheck(lowerRatio.Count, lowerAbove, upperBelow, worstLower, worstUpper, Median(lowerRatio), Median(upperRatio));
    }
}
