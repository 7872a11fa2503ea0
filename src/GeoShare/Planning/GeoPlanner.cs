using System.Diagnostics;
using GeoShare.Curvature;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>How the coloring is searched: CP-SAT over all candidate groups, greedy merging, or whichever is feasible.</summary>
public enum SearchMethod { Auto, Exact, Greedy }

/// <summary>The search that runs, what was asked for, and why that one runs.</summary>
public sealed record SearchChoice(SearchMethod Method, SearchMethod Requested, string Reason);

/// <summary>Screened costing's pair prescreen: each layer's best <see cref="Partners"/> pairs are bounded (0: every pair), and why.</summary>
public sealed record PrescreenChoice(int Partners, string Reason);

/// <summary>Which candidate groups are costed exactly: all of them, those that survive a cheap screen (<see cref="GroupScreen"/>), or whichever fits.</summary>
public enum CostingMethod { Auto, Full, Screened }

/// <summary>The costing that runs, what was asked for, and why.</summary>
public sealed record CostingChoice(CostingMethod Method, CostingMethod Requested, string Reason);

/// <summary>The planner's options; the defaults are the command line's.</summary>
public sealed record PlannerOptions
{
    /// <summary>Fraction of the shareable matrices' parameters to remove.</summary>
    public required double Ratio { get; init; }
    public CurvatureMethod Curvature { get; init; } = CurvatureMethod.Kfac;
    /// <summary>Top eigenpairs per block (exact: Lanczos; K-FAC: of A ⊗ G).</summary>
    public int TopK { get; init; } = 4;
    /// <summary>Lanczos residual tolerance: a cost model needs the directions, not eigenvalues to many digits.</summary>
    public double Tolerance { get; init; } = 1e-2;
    /// <summary>Hutchinson probes for each block's trace (exact curvature).</summary>
    public int TraceProducts { get; init; } = 8;
    /// <summary>Monte-Carlo samples of the output curvature per prediction for K-FAC's G (0: the exact factorisation).</summary>
    public int KfacSamples { get; init; } = 4;
    public int MaxGroupSize { get; init; } = 2;
    public bool Contiguous { get; init; }
    public IReadOnlySet<int> PrivateLayers { get; init; } = new HashSet<int>();
    /// <summary>Types whose layers may share; null: <see cref="ShareableTypes.Default"/>.</summary>
    public IReadOnlyList<string>? SharedTypes { get; init; }
    /// <summary>τ: ‖δ‖ ≤ (1 + τ)‖δ_BasisSharing‖ per layer.</summary>
    public double Trust { get; init; } = 0.5;
    /// <summary>
    /// Include the first-order term ⟨g, δ⟩. Off by default: at a trained minimum its expectation is about zero, and
    /// the gradient of a few calibration windows is noise that a trust-region solve would exploit (predicting a loss
    /// decrease that other data does not show).
    /// </summary>
    public bool UseGradient { get; init; }
    /// <summary>Auto: exact up to <see cref="GeoPlanner.ExactSearchMaxVariables"/> (group, rank) choices, greedy beyond; exact runs at any depth.</summary>
    public SearchMethod Search { get; init; } = SearchMethod.Auto;
    public double TimeLimitSeconds { get; init; } = 120;
    /// <summary>
    /// Rank options of a group: kept fractions 1 − ratio + these offsets (<see cref="GeoPlanner.KeptFractions"/>). The
    /// default is the first planner's ±0.1, ±0.2 (<see cref="FirstKeptOffsets"/>) and two far options, −0.4 and 0.98: the
    /// ±0.2 ends were chosen for many groups, and these two bought most of what all nine wide options did
    /// (bench/ablation.md: "Rank options"); without the ±0.1 steps (five options) GPT-2 and LLaMA lost at 0.7.
    /// </summary>
    public double[] KeptOffsets { get; init; } = [-0.4, -0.2, -0.1, 0, 0.1, 0.2, 1];

    /// <summary>The first planner's rank options (the default until 2026-12-07): 1 − ratio ± 0.1, ± 0.2.</summary>
    public static readonly double[] FirstKeptOffsets = [-0.2, -0.1, 0, 0.1, 0.2];

    /// <summary>1 − ratio − 0.4 … + 0.3 by 0.1 and 0.98 (the last offset, 1, is lowered to 0.98 at any ratio): `--kept-offsets wide`.</summary>
    public static readonly double[] WideKeptOffsets = [-0.4, -0.3, -0.2, -0.1, 0, 0.1, 0.2, 0.3, 1];
    public long Seed { get; init; }
    /// <summary>Auto: full costing up to <see cref="GeoPlanner.FullCostingMaxWork"/>, screened beyond.</summary>
    public CostingMethod Costing { get; init; } = CostingMethod.Auto;
    /// <summary>Screened costing: each layer's best this many groups of each size (by the upper bound) are costed in the first set;
    /// 0 (the default): none, the cost-then-verify loop costs what the search chooses (the same optimum; bench/scale.md);
    /// where no verify loop runs (--gradient, a search too large to be exact) each layer's best group of each size is
    /// costed too. Shards cost the first set.</summary>
    public int ScreenPartners { get; init; }
    /// <summary>Screened costing: cost every single layer exactly before the first search (true), or (false, the default)
    /// let single layers of shared types enter the cost-then-verify search by their bounds like larger groups, costed when
    /// chosen (the same optimum; fewer groups costed). Where no verify loop runs (a shard, --gradient, a search too large to
    /// be exact) single layers are costed first either way.</summary>
    public bool CostSinglesFirst { get; init; }
    /// <summary>Screened costing: bound only the pairs <see cref="PairPrescreen"/> keeps, each layer's this many best partners by a
    /// sketched subspace affinity (0: every allowed pair is bounded); null (auto): <see cref="GeoPlanner.AutoPrescreenPartners"/>
    /// where bounding every pair is beyond <see cref="GeoPlanner.PrescreenMinWork"/>, none below (<see cref="GeoPlanner.ChoosePrescreen"/>).</summary>
    public int? PrescreenPartners { get; init; }
    /// <summary>Costed groups are read from and written to this folder (shards, resumed runs); null: in memory only.</summary>
    public GroupCostCells? Cells { get; init; }

    /// <summary>Checks every option against the model (the errors name the options in the library's terms); returns the search that will run.</summary>
    public SearchChoice Validate(PretrainedModel model)
    {
        static void Fail(string parameter, string problem) => throw new UsageException(parameter, problem);
        int n = model.Config.NumLayers;
        if (!(Ratio > 0 && Ratio < 1)) Fail("ratio", $"must be within (0, 1), got {Ratio}");
        if (!Enum.IsDefined(Curvature)) Fail("curvature", $"method {(int)Curvature} is not exact or kfac");
        if (TopK < 1) Fail("top", $"must be at least 1, got {TopK}");
        if (!(Tolerance > 0)) Fail("tolerance", $"must be positive, got {Tolerance}");
        if (TraceProducts < 1) Fail("trace_products", $"must be at least 1, got {TraceProducts}");
        if (KfacSamples < 0) Fail("kfac_samples", $"must be at least 0, got {KfacSamples}");
        if (MaxGroupSize < 1) Fail("max_group", $"must be at least 1, got {MaxGroupSize}");
        foreach (int l in PrivateLayers.Where(l => l < 0 || l >= n).Take(1)) Fail("private", $"layer {l} is not a layer index in 0..{n - 1}");
        if (SharedTypes?.FirstOrDefault(t => !model.ProjectionTypes.Contains(t)) is { } unknown)
            Fail("shared_types", $"'{unknown}' is not a matrix type of the model ({string.Join(", ", model.ProjectionTypes)})");
        if (!(Trust >= 0)) Fail("trust", $"must be at least 0, got {Trust}");
        if (!(TimeLimitSeconds > 0)) Fail("time_limit", $"must be positive, got {TimeLimitSeconds} s");
        if (!Enum.IsDefined(Costing)) Fail("costing", $"method {(int)Costing} is not auto, full or screened");
        if (ScreenPartners < 0) Fail("screen_partners", $"must be at least 0, got {ScreenPartners}");
        if (PrescreenPartners < 0) Fail("prescreen", $"must be at least 0 partners, got {PrescreenPartners}");
        if (GeoPlanner.KeptFractions(this).Length == 0)
            Fail("kept_offsets", $"[{string.Join(", ", KeptOffsets)}] leave no kept fraction of at least {GeoPlanner.MinKeptFraction} at ratio {Ratio}");
        // Group costs are cached under a 64-bit mask of the group's layers.
        if (n > 64) Fail("model", $"the planner handles at most 64 layers per type, the model has {n}");
        return GeoPlanner.ChooseSearch(Search, n, GeoPlanner.SearchVariables(model, this, null));
    }

    /// <summary>What the plan's curvature-aligned coefficients need to be computed again (see <see cref="GeoPlanner.AlignedCoefficients"/>).</summary>
    public CoefficientRecipe CoefficientRecipe(LossBatch curvatureBatch, ScalarType dtype) => new()
    {
        Curvature = Curvature, TopK = TopK, Tolerance = Tolerance, TraceProducts = TraceProducts, KfacSamples = KfacSamples,
        Trust = Trust, UseGradient = UseGradient, Seed = Seed, CurvatureBatch = curvatureBatch.Description,
        ModelDtype = dtype.ToString().ToLowerInvariant(),
    };

    /// <summary>The options a recipe records (the rest at their defaults: they choose the plan, not its coefficients).</summary>
    public static PlannerOptions FromRecipe(CoefficientRecipe r, double ratio) => new()
    {
        Ratio = ratio, Curvature = r.Curvature, TopK = r.TopK, Tolerance = r.Tolerance, TraceProducts = r.TraceProducts,
        KfacSamples = r.KfacSamples, Trust = r.Trust, UseGradient = r.UseGradient, Seed = r.Seed,
    };
}

public sealed class PlannerResult : IDisposable
{
    public required SharingPlan Plan { get; init; }
    public required GroupCostEvaluator Costs { get; init; }
    public required IReadOnlyDictionary<string, BlockCurvatureModel> Curvature { get; init; }
    public required SearchChoice SearchChoice { get; init; }
    public required SearchResult Search { get; init; }
    /// <summary>The kept fractions of every group's rank options (<see cref="GeoPlanner.KeptFractions"/>).</summary>
    public required double[] KeptFractions { get; init; }
    /// <summary>The greedy search on the same costs, beside the exact one; null where the search was greedy or not every single layer was costed.</summary>
    public SearchResult? GreedyComparison { get; init; }
    /// <summary>Extra predicted loss of sharing each pair of layers, per shared type (for the picture).</summary>
    public required Dictionary<string, double[,]> PairwiseCost { get; init; }
    /// <summary>Groups the search costed.</summary>
    public required int CandidateGroups { get; init; }
    /// <summary>Groups costed only for <see cref="PairwiseCost"/> (pairs or single layers the search did not need).</summary>
    public required int PictureGroups { get; init; }
    public required CostingChoice Costing { get; init; }
    /// <summary>Groups the constraints allow (what full costing costs).</summary>
    public required int AllowedGroups { get; init; }
    /// <summary>Groups the screen estimated (screened costing; 0 under full costing).</summary>
    public required int ScreenedGroups { get; init; }
    /// <summary>Costed groups read from <see cref="PlannerOptions.Cells"/> rather than computed.</summary>
    public required int CellGroups { get; init; }
    /// <summary>Screened costing: the seconds of the screen and of the cost-then-verify loop (with the exact costs it made).</summary>
    public required double ScreenSeconds { get; init; }
    /// <summary>Screened costing: groups in the first costed set (single layers and each layer's best partners), before verification.</summary>
    public int ScreenInitialGroups { get; init; }
    /// <summary>Screened costing: exact searches of the cost-then-verify loop (0: not run).</summary>
    public int ScreenRounds { get; init; }
    /// <summary>Screened costing: the seconds of bounding the groups (the cheap part of the screen).</summary>
    public double ScreenBoundSeconds { get; init; }
    /// <summary>Screened costing: the pair prescreen that ran (0 partners: none) and the allowed pairs it left unbounded.</summary>
    public PrescreenChoice? Prescreen { get; init; }
    public int PrescreenedOut { get; init; }
    public double PrescreenSeconds { get; init; }
    public required double CurvatureSeconds { get; init; }
    public required double CostSeconds { get; init; }
    public required long Budget { get; init; }
    public bool OwnsCurvature { get; init; } = true;

    public void Dispose()
    {
        Costs.Dispose();
        if (OwnsCurvature) foreach (var c in Curvature.Values) c.Dispose();
    }
}

/// <summary>
/// Geo-Sharing: curvature per block → predicted cost of every candidate group at every rank option → the
/// coloring and ranks of least predicted loss under the budget → a <see cref="SharingPlan"/>.
/// </summary>
public static class GeoPlanner
{
    /// <summary>
    /// Most (group, rank) choices `--search auto` hands to CP-SAT. The search itself is small: 78 groups × 5 ranks × 4
    /// types at 12 layers (groups of 2) took at most 3 s in bench/; 32 layers with groups of 2 are 528 × 7 per type.
    /// Beyond this (e.g. every group of 3 of 32 layers, 5,488 per type, fully costed) auto runs the greedy search.
    /// </summary>
    public const long ExactSearchMaxVariables = 40_000;

    /// <summary>
    /// Largest estimated work of full costing (Σ over candidate groups of in²·n·out, the stacked whitened SVD's
    /// multiply-adds) that `--costing auto` costs in full: the bundled 12-layer models need about 2·10¹⁰ and keep their
    /// exact plans; the GPT-2 124M shape needs 5·10¹¹ (950 s here) and is screened.
    /// </summary>
    public const double FullCostingMaxWork = 1e11;

    /// <summary>The search that runs for <paramref name="requested"/> with <paramref name="variables"/> (group, rank) choices.</summary>
    public static SearchChoice ChooseSearch(SearchMethod requested, int layers, long variables) => requested switch
    {
        SearchMethod.Exact => new(SearchMethod.Exact, requested, $"requested; {variables:N0} group × rank choices on {layers} layers per type"),
        SearchMethod.Greedy => new(SearchMethod.Greedy, requested, "requested"),
        SearchMethod.Auto when variables <= ExactSearchMaxVariables =>
            new(SearchMethod.Exact, requested, $"auto: {variables:N0} group × rank choices is within the exact search's limit of {ExactSearchMaxVariables:N0}"),
        SearchMethod.Auto => new(SearchMethod.Greedy, requested, $"auto: {variables:N0} group × rank choices is beyond the exact search's limit of {ExactSearchMaxVariables:N0}"),
        _ => throw new UsageException("search", $"{(int)requested} is not auto, exact or greedy"),
    };

    /// <summary>The costing that runs: full or screened as asked; auto by the estimated work of full costing.</summary>
    public static CostingChoice ChooseCosting(CostingMethod requested, double work, int maxGroupSize) => requested switch
    {
        _ when maxGroupSize < 2 => new(CostingMethod.Full, requested, "groups of one: nothing to screen"),
        CostingMethod.Full => new(CostingMethod.Full, requested, "requested"),
        CostingMethod.Screened => new(CostingMethod.Screened, requested, "requested"),
        CostingMethod.Auto when work <= FullCostingMaxWork => new(CostingMethod.Full, requested, $"auto: full costing is {work:0.0e0} multiply-adds, within {FullCostingMaxWork:0e0}"),
        CostingMethod.Auto => new(CostingMethod.Screened, requested, $"auto: full costing would be {work:0.0e0} multiply-adds, beyond {FullCostingMaxWork:0e0}"),
        _ => throw new UsageException("costing", $"{(int)requested} is not auto, full or screened"),
    };

    /// <summary>
    /// Estimated multiply-adds of bounding every allowed pair (per pair: the eigendecomposition's side, in², plus the members'
    /// products, in²·n·out) past which `--prescreen auto` bounds only each layer's best partners: the GPT-2 124M shape needs
    /// 3·10¹² (about 40 s of bounds here) and bounds every pair; a 32 × d1024 LLaMA 7·10¹³, a 16 × d2048 one 10¹⁴ (about
    /// 30 min).
    /// </summary>
    public const double PrescreenMinWork = 1e13;

    /// <summary>Partners each layer keeps where `--prescreen auto` prescreens.</summary>
    public const int AutoPrescreenPartners = 3;

    /// <summary>Estimated multiply-adds of bounding every allowed pair.</summary>
    public static double BoundWork(PretrainedModel model, IReadOnlyDictionary<string, List<int[]>> groups) =>
        groups.Sum(kv =>
        {
            var site = model.Site(kv.Key, 0);
            double din = site.InFeatures, dout = site.OutFeatures;
            return kv.Value.Where(g => g.Length == 2).Sum(g => din * din * (din + 2 * dout));
        });

    /// <summary>The pair prescreen of screened costing: as asked, or by <see cref="BoundWork"/> (auto).</summary>
    public static PrescreenChoice ChoosePrescreen(int? requested, double work) => requested switch
    {
        0 => new(0, "off (requested)"),
        int p => new(p, $"requested: each layer's {p} best partners"),
        null when work > PrescreenMinWork => new(AutoPrescreenPartners,
            $"auto: bounding every pair would be {work:0.0e0} multiply-adds, beyond {PrescreenMinWork:0e0}: each layer's {AutoPrescreenPartners} best partners"),
        null => new(0, $"auto: bounding every pair is {work:0.0e0} multiply-adds, within {PrescreenMinWork:0e0}"),
    };

    /// <summary>The groups the constraints allow, per type (shared types: every group up to the largest size; others: single layers).</summary>
    public static Dictionary<string, List<int[]>> AllowedGroups(PretrainedModel model, PlannerOptions o)
    {
        int n = model.Config.NumLayers;
        var shared = o.SharedTypes ?? ShareableTypes.Default(model);
        return model.ProjectionTypes.ToDictionary(t => t, t => shared.Contains(t)
            ? SetPartitions.Candidates(n, o.MaxGroupSize, o.Contiguous, o.PrivateLayers).ToList()
            : Enumerable.Range(0, n).Select(l => new[] { l }).ToList());
    }

    /// <summary>Estimated multiply-adds of costing <paramref name="groups"/> in full (the stacked whitened SVDs).</summary>
    public static double CostingWork(PretrainedModel model, IReadOnlyDictionary<string, List<int[]>> groups) =>
        groups.Sum(kv => kv.Value.Sum(g => (double)model.Site(kv.Key, 0).InFeatures * model.Site(kv.Key, 0).InFeatures * g.Length * model.Site(kv.Key, 0).OutFeatures));

    /// <summary>(group, rank) choices of the exact search over <paramref name="groups"/> (null: every allowed group).</summary>
    public static long SearchVariables(PretrainedModel model, PlannerOptions o, IReadOnlyDictionary<string, List<int[]>>? groups) =>
        (groups ?? AllowedGroups(model, o)).Values.Sum(v => (long)v.Count) * Math.Max(1, KeptFractions(o).Length);

    /// <summary>
    /// Parameters the shareable matrices may store: the kept fraction 1 − ratio of every type's n·in·out
    /// (Basis Sharing's budget), rounded down.
    /// </summary>
    public static long Budget(PretrainedModel model, double ratio)
    {
        int n = model.Config.NumLayers;
        double x0 = 1 - ratio;
        return (long)Math.Floor(x0 * model.ProjectionTypes.Sum(t => (double)n * model.Site(t, 0).InFeatures * model.Site(t, 0).OutFeatures));
    }

    /// <summary>
    /// Kept fractions of a group's rank options: 1 − ratio + each offset, those above 0.98 lowered to 0.98 (so the
    /// options reach nearly uncompressed layers at any ratio), those below 0.02 left out, once each.
    /// </summary>
    public static double[] KeptFractions(PlannerOptions o)
    {
        double x0 = 1 - o.Ratio;
        return o.KeptOffsets.Select(d => Math.Min(Math.Round(x0 + d, 6), MaxKeptFraction)).Where(x => x >= MinKeptFraction).Distinct().ToArray();
    }

    public const double MinKeptFraction = 0.02, MaxKeptFraction = 0.98;

    /// <summary>The groups that are costed exactly, per type, and how they were chosen.</summary>
    private sealed record CandidateSet(Dictionary<string, List<int[]>> Groups, CostingChoice Costing, int Allowed, int Screened,
        Dictionary<string, IReadOnlyDictionary<long, double>> Gains, double Seconds, int Initial, int Rounds, double BoundSeconds,
        PrescreenChoice? Prescreen = null, int PrescreenedOut = 0, double PrescreenSeconds = 0);

    /// <param name="verify">Screened costing: run the cost-then-verify loop (<see cref="GroupScreen.Select"/>); a shard costs the first set only.</param>
    private static CandidateSet Candidates(PlanningInputs inputs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        GroupCostEvaluator costs, PlannerOptions o, long budget, bool verify, IProgress<ProgressTick>? progress)
    {
        var model = inputs.Model;
        var sw = Stopwatch.StartNew();
        var allowed = AllowedGroups(model, o);
        var costing = ChooseCosting(o.Costing, CostingWork(model, allowed), o.MaxGroupSize);
        int allowedCount = allowed.Values.Sum(v => v.Count);
        if (costing.Method == CostingMethod.Full) return new(allowed, costing, allowedCount, 0, new(), 0, allowedCount, 0, 0);
        var prescreen = ChoosePrescreen(o.PrescreenPartners, BoundWork(model, allowed));
        var s = GroupScreen.Select(inputs, curvature, costs, o, allowed, KeptFractions(o), budget, verify, progress, prescreen.Partners);
        return new(s.Groups, costing, allowedCount, s.Screened, s.Gains, sw.Elapsed.TotalSeconds, s.Initial, s.Rounds, s.BoundSeconds,
            prescreen, s.PrescreenedOut, s.PrescreenSeconds);
    }

    /// <param name="curvature">Block models already collected (kept by the caller); null: collect them here.</param>
    public static PlannerResult Plan(PretrainedModel model, ActivationGrams grams, LossBatch curvatureBatch, PlannerOptions o,
        IProgress<ProgressTick>? progress = null, IReadOnlyDictionary<string, BlockCurvatureModel>? curvature = null) =>
        Plan(PlanningInputs.Resident(model, grams), curvatureBatch, o, progress, curvature);

    /// <summary>The plan from <paramref name="inputs"/>: the resident model, or a layer-wise run (checkpoint, spilled grams, streamed K-FAC).</summary>
    public static PlannerResult Plan(PlanningInputs inputs, LossBatch curvatureBatch, PlannerOptions o,
        IProgress<ProgressTick>? progress = null, IReadOnlyDictionary<string, BlockCurvatureModel>? curvature = null)
    {
        var model = inputs.Model;
        o.Validate(model);
        var sw = Stopwatch.StartNew();
        bool owns = curvature is null;
        curvature ??= BlockCurvatureModel.Collect(inputs, curvatureBatch, o, progress);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();

        var costs = new GroupCostEvaluator(inputs, curvature, o.Trust, o.UseGradient) { Cells = o.Cells };
        try
        {
            var shared = o.SharedTypes ?? ShareableTypes.Default(model);
            var kept = KeptFractions(o);
            long budget = Budget(model, o.Ratio);
            var candidates = Candidates(inputs, curvature, costs, o, budget, verify: true, progress);
            var choice = ChooseSearch(o.Search, model.Config.NumLayers, SearchVariables(model, o, candidates.Groups));
            var (result, greedy, costSeconds) = Search(model, costs, o, candidates.Groups, kept, budget, choice.Method == SearchMethod.Exact, sw, progress);
            int searched = costs.Evaluated;
            var pairwise = shared.Where(model.ProjectionTypes.Contains).ToDictionary(t => t,
                t => Pairwise(costs, model, t, kept, 1 - o.Ratio, candidates.Costing.Method == CostingMethod.Screened ? candidates.Gains.GetValueOrDefault(t) : null));
            var plan = ToPlan(model, result, o.Ratio) with { Coefficients = o.CoefficientRecipe(curvatureBatch, model.DType) };
            return new PlannerResult
            {
                Plan = plan, Costs = costs, Curvature = curvature, OwnsCurvature = owns, SearchChoice = choice, Search = result, GreedyComparison = greedy,
                KeptFractions = kept,
                PairwiseCost = pairwise, CandidateGroups = searched, PictureGroups = costs.Evaluated - searched,
                Costing = candidates.Costing, AllowedGroups = candidates.Allowed, ScreenedGroups = candidates.Screened, CellGroups = o.Cells?.Read ?? 0,
                ScreenSeconds = candidates.Seconds, ScreenInitialGroups = candidates.Initial, ScreenRounds = candidates.Rounds, ScreenBoundSeconds = candidates.BoundSeconds,
                Prescreen = candidates.Prescreen, PrescreenedOut = candidates.PrescreenedOut, PrescreenSeconds = candidates.PrescreenSeconds,
                CurvatureSeconds = curvatureSeconds, CostSeconds = costSeconds, Budget = budget,
            };
        }
        catch
        {
            costs.Dispose();
            if (owns) foreach (var c in curvature.Values) c.Dispose();
            throw;
        }
    }

    /// <summary>What one shard did: its share of the groups to cost, how many it computed and how many were already in the folder.</summary>
    public sealed record ShardResult(int Shard, int Shards, int Groups, int Share, int Computed, int FromCells, CostingChoice Costing, int ScreenedGroups,
        double CurvatureSeconds, double CostSeconds);

    /// <summary>
    /// Costs shard <paramref name="shard"/> of <paramref name="shards"/> of the groups the plan needs into
    /// <see cref="PlannerOptions.Cells"/>: the groups (after the screen, which every shard runs identically) in their
    /// fixed order, every <paramref name="shards"/>-th from the <paramref name="shard"/>-th. No search: a run without a
    /// shard finishes from the cells.
    /// </summary>
    public static ShardResult CostShard(PretrainedModel model, ActivationGrams grams, LossBatch curvatureBatch, PlannerOptions o, int shard, int shards,
        IProgress<ProgressTick>? progress = null) => CostShard(PlanningInputs.Resident(model, grams), curvatureBatch, o, shard, shards, progress);

    /// <summary><see cref="CostShard(PretrainedModel, ActivationGrams, LossBatch, PlannerOptions, int, int, IProgress{ProgressTick}?)"/> on the planner's inputs.</summary>
    public static ShardResult CostShard(PlanningInputs inputs, LossBatch curvatureBatch, PlannerOptions o, int shard, int shards,
        IProgress<ProgressTick>? progress = null)
    {
        var model = inputs.Model;
        o.Validate(model);
        if (o.Cells is null) throw new UsageException("cells", "a shard writes its costs into a cells folder");
        if (shards < 1 || shard < 0 || shard >= shards) throw new UsageException("shard", $"shard {shard} of {shards} is not within 0..{shards - 1}");
        var sw = Stopwatch.StartNew();
        var curvature = BlockCurvatureModel.Collect(inputs, curvatureBatch, o, progress);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();
        using var costs = new GroupCostEvaluator(inputs, curvature, o.Trust, o.UseGradient) { Cells = o.Cells };
        try
        {
            var kept = KeptFractions(o);
            var candidates = Candidates(inputs, curvature, costs, o, Budget(model, o.Ratio), verify: false, progress);
            var jobs = Jobs(model, candidates.Groups);
            var mine = jobs.Where((_, i) => i % shards == shard).ToList();
            int done = 0;
            progress?.Report(new ProgressTick("group costs", 0, mine.Count, "groups"));
            SingleThreadedWorkers.Map(mine, j =>
            {
                var c = costs.Evaluate(j.Type, j.Layers, costs.Ranks(j.Type, j.Layers.Length, kept));
                progress?.Report(new ProgressTick("group costs", Interlocked.Increment(ref done), mine.Count, "groups"));
                return c;
            }, j => costs.IsWide(j.Type, j.Layers));
            return new ShardResult(shard, shards, jobs.Count, mine.Count, o.Cells.Written, o.Cells.Read, candidates.Costing, candidates.Screened,
                curvatureSeconds, sw.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var c in curvature.Values) c.Dispose();
        }
    }

    /// <summary>Every group to cost, in a fixed order: by type (the model's order), then as the candidate lists give them.</summary>
    private static List<(string Type, int[] Layers)> Jobs(PretrainedModel model, IReadOnlyDictionary<string, List<int[]>> groups) =>
        model.ProjectionTypes.SelectMany(t => groups[t].Select(g => (Type: t, Layers: g))).ToList();

    /// <summary>
    /// The search over group costs. Exact: every candidate group is costed first (in parallel), CP-SAT chooses, and the
    /// greedy search runs on the same cached costs for comparison. Greedy: groups are costed as it asks for them.
    /// </summary>
    private static (SearchResult Result, SearchResult? Greedy, double CostSeconds) Search(PretrainedModel model, GroupCostEvaluator costs, PlannerOptions o,
        IReadOnlyDictionary<string, List<int[]>> candidateLists, double[] kept, long budget, bool exact, Stopwatch sw, IProgress<ProgressTick>? progress)
    {
        int n = model.Config.NumLayers;
        int total = candidateLists.Values.Sum(c => c.Count), done = 0;
        var candidateMasks = candidateLists.ToDictionary(kv => kv.Key, kv => kv.Value.Select(GroupScreen.Mask).ToHashSet());

        GroupCandidate Cost(string type, int[] layers) => costs.Evaluate(type, layers, costs.Ranks(type, layers.Length, kept));
        GroupCandidate Eval(string type, int[] layers)
        {
            int before = costs.Evaluated;
            var c = Cost(type, layers);
            if (costs.Evaluated == before) return c; // cached: the greedy search asks again and again, nothing new to show
            int d = Interlocked.Increment(ref done);
            progress?.Report(new ProgressTick("group costs", d, Math.Max(total, d), "groups"));
            return c;
        }

        SearchResult result;
        SearchResult? greedy = null;
        var types = new List<TypeSearch>();
        if (exact)
        {
            progress?.Report(new ProgressTick("group costs", 0, total, "groups"));
            var jobs = Jobs(model, candidateLists);
            var evaluated = SingleThreadedWorkers.Map(jobs, j => Eval(j.Type, j.Layers), j => !costs.IsCached(j.Type, j.Layers) && costs.IsWide(j.Type, j.Layers),
                j => costs.Work(j.Type, j.Layers));
            foreach (var t in model.ProjectionTypes)
                types.Add(new TypeSearch(t, n, jobs.Select((j, i) => (j, i)).Where(x => x.j.Type == t).Select(x => evaluated[x.i]).ToList()));
        }
        double costSeconds = sw.Elapsed.TotalSeconds;
        bool Allowed(string type, int[] layers) => candidateMasks[type].Contains(GroupScreen.Mask(layers));
        GroupCandidate? Oracle(string type, int[] layers) => Allowed(type, layers) ? Eval(type, layers) : null;
        var typeSizes = model.ProjectionTypes.Select(t => (t, n)).ToList();
        if (exact)
        {
            progress?.Report(new ProgressTick("search", 0, 1, "cp-sat"));
            result = ColoringSearch.Exact(types, budget, o.TimeLimitSeconds);
            progress?.Report(new ProgressTick("search", 1, 1, "cp-sat"));
            // The heuristic on the same (cached) costs: its gap to the optimum is what it would lose on deeper models. It starts
            // from every single layer, so it runs only where all were costed (not where screening let the search choose them).
            if (model.ProjectionTypes.All(t => Enumerable.Range(0, n).All(l => Allowed(t, [l]))))
                greedy = ColoringSearch.Greedy(typeSizes, (t, g) => Allowed(t, g) ? Cost(t, g) : null, budget);
        }
        else
        {
            result = ColoringSearch.Greedy(typeSizes, Oracle, budget);
            costSeconds = sw.Elapsed.TotalSeconds;
        }
        return (result, greedy, costSeconds);
    }

    /// <summary>
    /// Curvature-aligned coefficients for a saved plan, from what it records: the block curvature is collected again
    /// with the plan's settings on <paramref name="curvatureBatch"/> (which must be the plan's), so that compressing
    /// by the plan writes the model the planner's own run writes.
    /// </summary>
    public static AlignedCoefficientSolver AlignedCoefficients(PretrainedModel model, SharingPlan plan, ActivationGrams grams, LossBatch curvatureBatch,
        IProgress<ProgressTick>? progress = null) => AlignedCoefficients(PlanningInputs.Resident(model, grams), plan, curvatureBatch, progress);

    /// <summary>The saved plan's curvature-aligned coefficients from <paramref name="inputs"/> (resident or layer-wise).</summary>
    public static AlignedCoefficientSolver AlignedCoefficients(PlanningInputs inputs, SharingPlan plan, LossBatch curvatureBatch,
        IProgress<ProgressTick>? progress = null)
    {
        var model = inputs.Model;
        var recipe = plan.Coefficients ?? throw new ArgumentException("the plan records no curvature-aligned coefficients (Basis Sharing's need no solver)", nameof(plan));
        if (recipe.CurvatureBatch != curvatureBatch.Description)
            throw new UsageException($"the plan's curvature batch is '{recipe.CurvatureBatch}', this one is '{curvatureBatch.Description}'");
        string dtype = model.DType.ToString().ToLowerInvariant();
        if (recipe.ModelDtype != dtype)
            throw new UsageException($"the plan's curvature was computed on the {recipe.ModelDtype} model, this model is {dtype}");
        var o = PlannerOptions.FromRecipe(recipe, plan.Ratio ?? 0.5); // the ratio chooses ranks; it does not enter the curvature
        var curvature = BlockCurvatureModel.Collect(inputs, curvatureBatch, o, progress);
        return new AlignedCoefficientSolver(new GroupCostEvaluator(inputs, curvature, o.Trust, o.UseGradient), curvature);
    }

    /// <summary>The coloring (canonical) and ranks per type from chosen groups; predicted loss per color.</summary>
    public static SharingPlan ToPlan(PretrainedModel model, SearchResult result, double ratio)
    {
        var types = new Dictionary<string, TypePlan>();
        foreach (var byType in result.Groups.GroupBy(g => g.Type))
        {
            var groups = byType.OrderBy(g => g.Layers.Min()).ToList();
            var coloring = new int[model.Config.NumLayers];
            for (int c = 0; c < groups.Count; c++) foreach (int l in groups[c].Layers) coloring[l] = c;
            types[byType.Key] = new TypePlan
            {
                Mode = SharingMode.Basis, Coloring = coloring,
                Ranks = groups.Select(g => g.Option.Rank).ToArray(),
                PredictedLoss = groups.Select(g => g.Option.Predicted).ToArray(),
            };
        }
        return SharingPlan.ForModel(model, "geo", ratio, types);
    }

    /// <summary>
    /// Extra predicted loss of sharing layers i and j (nominal rank) over keeping each alone. Screened costing: pairs that
    /// were not costed, or whose layers were not costed alone, show the screen's estimate of the same difference
    /// (<paramref name="screen"/>), and nothing is costed for the picture.
    /// </summary>
    private static double[,] Pairwise(GroupCostEvaluator costs, PretrainedModel model, string type, double[] kept, double x0,
        IReadOnlyDictionary<long, double>? screen)
    {
        int n = model.Config.NumLayers;
        var m = new double[n, n];
        RankOption Nominal(int[] layers)
        {
            var c = costs.Evaluate(type, layers, costs.Ranks(type, layers.Length, kept));
            int target = costs.Ranks(type, layers.Length, [x0])[0];
            return c.Options.MinBy(op => Math.Abs(op.Rank - target))!;
        }
        // Exact differences where the pair and both its layers were costed (all of them without screening); else the screen's,
        // and NaN (a blank cell) for a pair the screen did not bound (prescreened out): nothing is costed for the picture.
        var single = new double?[n];
        double Single(int l) => single[l] ??= Nominal([l]).Predicted;
        bool Costed(int i, int j) => costs.IsCached(type, [i, j]) && costs.IsCached(type, [i]) && costs.IsCached(type, [j]);
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                m[i, j] = m[j, i] = screen is not null && !Costed(i, j)
                    ? screen.TryGetValue((1L << i) | (1L << j), out double estimate) ? estimate : double.NaN
                    : Nominal([i, j]).Predicted - Single(i) - Single(j);
        return m;
    }
}
