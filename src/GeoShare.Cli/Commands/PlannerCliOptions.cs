using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Planning;
using GeoShare.Sharing;

namespace GeoShare.Cli.Commands;

/// <summary>The Geo-Sharing planner's options, shared by `plan` and `compress --method geo`.</summary>
public static class PlannerCliOptions
{
    public static IReadOnlyList<OptionSpec> Specs =>
    [
        new("--curvature", "exact|kfac", "block curvature: Lanczos eigenpairs + Hutchinson trace on Hessian-vector products, or K-FAC factors", "kfac"),
        new("--curvature-windows", "N", "windows (images) of the curvature batch, from the first of the calibration data, stride --curvature-stride", DefaultNote: "4 windows (language models), 64 images (ViT)"),
        new("--curvature-stride", "S", "stride of the curvature batch", DefaultNote: "1 (language models), 16 (ViT)"),
        new("--top", "K", "top eigenpairs per block in the cost model", "4"),
        new("--max-group", "N", "largest group of layers that may share (every group up to this size is costed: 12 layers give 78 groups at 2, 298 at 3, 793 at 4)", "2"),
        new("--contiguous", null, "only groups of consecutive layers"),
        new("--private", "LAYERS", "layers that never share (comma-separated indices)"),
        new("--search", "exact|greedy", "CP-SAT over all groups (up to 12 layers per type), or greedy merging + local search", "exact"),
        new("--gradient", null, "include the first-order term ⟨g, δ⟩ of the calibration batch in the predicted loss (off: at a trained minimum it is noise)"),
        new("--trust", "TAU", "trust region: ‖δ‖ ≤ (1 + TAU)·‖δ of Basis Sharing‖ per layer", "0.5"),
    ];

    public static PlannerOptions Parse(ParsedArgs a, PretrainedModel model, double ratio)
    {
        int n = model.Config.NumLayers;
        var privateLayers = a.List("--private").Select(s => int.TryParse(s, out int l) && l >= 0 && l < n ? l
            : throw new UsageException($"--private: '{s}' is not a layer index in 0..{n - 1}")).ToHashSet();
        return new PlannerOptions
        {
            Ratio = ratio,
            Curvature = a.Choice("--curvature", "exact", "kfac") == "exact" ? CurvatureMethod.Exact : CurvatureMethod.Kfac,
            TopK = a.Int("--top", min: 1),
            MaxGroupSize = a.Int("--max-group", min: 1),
            Contiguous = a.Flag("--contiguous"),
            PrivateLayers = privateLayers,
            SharedTypes = ShareableTypes.Resolve(model, a.List("--share")),
            Search = a.Choice("--search", "exact", "greedy"),
            Trust = a.Double("--trust", min: 0),
            UseGradient = a.Flag("--gradient"),
            Seed = a.Int("--seed", min: 0),
        };
    }

    /// <summary>A few windows carry 1000 predictions each; a classifier needs more images for as many.</summary>
    public static LossBatch CurvatureBatch(PretrainedModel model, string modelDir, ParsedArgs a) =>
        model.Task == ModelTask.CausalLanguageModel
            ? CalibrationOptions.Load(model, modelDir, a, "--curvature-windows", "--curvature-stride", defaultCount: 4, defaultStride: 1)
            : CalibrationOptions.Load(model, modelDir, a, "--curvature-windows", "--curvature-stride", defaultCount: 64, defaultStride: 16);

    /// <summary>Calibration second moments (unless given), the curvature batch, and the planner.</summary>
    public static PlannerResult Run(PretrainedModel model, string modelDir, ParsedArgs a, PlannerOptions options, ConsoleProgress progress,
        ActivationGrams? grams = null)
    {
        ActivationGrams? own = null;
        if (grams is null)
        {
            var calibration = CalibrationOptions.CalibrationSet(model, modelDir, a);
            grams = own = ActivationGrams.Collect(model, calibration, model.Sites, progress);
        }
        try
        {
            using var batch = CurvatureBatch(model, modelDir, a);
            return GeoPlanner.Plan(model, grams, batch, options, progress);
        }
        finally
        {
            own?.Dispose();
        }
    }

    public static void PrintSummary(PretrainedModel model, PlannerResult r)
    {
        var table = new TextTable("type", "groups (layers sharing a basis)", "ranks", "stored parameters", "predicted ΔL");
        foreach (var byType in r.Search.Groups.GroupBy(g => g.Type).OrderBy(g => model.ProjectionTypes.ToList().IndexOf(g.Key)))
        {
            var groups = byType.OrderBy(g => g.Layers[0]).ToList();
            table.Add(byType.Key, string.Join(" ", groups.Select(g => string.Join("+", g.Layers))), string.Join(",", groups.Select(g => g.Option.Rank)),
                groups.Sum(g => g.Option.Parameters), CommonOptions.Fmt(groups.Sum(g => g.Option.Predicted), "0.00000"));
        }
        table.Add("all", "", "", r.Search.Parameters, CommonOptions.Fmt(r.Search.Objective, "0.00000"));
        Console.WriteLine($"Geo-Sharing plan at ratio {CommonOptions.Fmt(r.Plan.Ratio ?? 0, "0.00")}: budget {r.Budget:N0} parameters, {r.CandidateGroups} candidate groups costed; " +
            $"search {r.Search.Method} {r.Search.Status} in {CommonOptions.Fmt(r.Search.Seconds, "0.0")} s; curvature {CommonOptions.Fmt(r.CurvatureSeconds, "0")} s, costs {CommonOptions.Fmt(r.CostSeconds, "0")} s");
        Console.WriteLine(table);
        if (r.GreedyComparison is { } g)
            Console.WriteLine($"greedy search on the same costs: predicted ΔL {CommonOptions.Fmt(g.Objective, "0.00000")} " +
                $"({CommonOptions.Fmt(100 * (g.Objective - r.Search.Objective) / Math.Max(Math.Abs(r.Search.Objective), 1e-300), "0.00")}% above the optimum)");
    }

    /// <summary>The planner's result as JSON: the search, every chosen group's predicted cost, timings.</summary>
    public static PlannerSummary Summary(PlannerResult r) => new()
    {
        Search = new(r.Search.Method, r.Search.Status, r.Search.Objective, r.Search.Bound, r.Search.Seconds),
        GreedyOnTheSameCosts = r.GreedyComparison is not { } g ? null : new(g.Objective, g.Parameters, g.Seconds,
            (g.Objective - r.Search.Objective) / Math.Max(Math.Abs(r.Search.Objective), 1e-300)),
        Budget = r.Budget,
        StoredParameters = r.Search.Parameters,
        CandidateGroups = r.CandidateGroups,
        CurvatureSeconds = r.CurvatureSeconds,
        CostSeconds = r.CostSeconds,
        Groups = r.Search.Groups.OrderBy(g => g.Type).ThenBy(g => g.Layers[0]).Select(g => new PlannedGroup(
            g.Type, g.Layers, g.Option.Rank, g.Option.Parameters, g.Option.Predicted, g.Option.Linear, g.Option.Quadratic,
            g.Option.HighCurvatureEnergy)).ToList(),
        PairwiseCost = r.PairwiseCost.ToDictionary(kv => kv.Key, kv => PlannerSummary.Rows(kv.Value)),
        Blocks = r.Curvature.Values.Select(c => new PlannedBlockCurvature(c.Site, c.Method, c.TopValues, c.Corrections, c.Trace, c.TraceStandardError)).ToList(),
    };
}
