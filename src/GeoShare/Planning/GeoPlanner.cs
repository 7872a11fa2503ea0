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
    /// <summary>Auto: exact up to <see cref="GeoPlanner.ExactSearchMaxLayers"/> layers per type, greedy beyond.</summary>
    public SearchMethod Search { get; init; } = SearchMethod.Auto;
    public double TimeLimitSeconds { get; init; } = 120;
    /// <summary>Rank options of a group: kept fractions 1 − ratio + these offsets.</summary>
    public double[] KeptOffsets { get; init; } = [-0.2, -0.1, 0, 0.1, 0.2];
    public long Seed { get; init; }

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
        if (GeoPlanner.KeptFractions(this).Length == 0)
            Fail("kept_offsets", $"[{string.Join(", ", KeptOffsets)}] leave no kept fraction within [0.02, 0.98] at ratio {Ratio}");
        // Group costs are cached under a 64-bit mask of the group's layers.
        if (n > 64) Fail("model", $"the planner handles at most 64 layers per type, the model has {n}");
        return GeoPlanner.ChooseSearch(Search, n);
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
    public SearchResult? GreedyComparison { get; init; }
    /// <summary>Extra predicted loss of sharing each pair of layers, per shared type (for the picture).</summary>
    public required Dictionary<string, double[,]> PairwiseCost { get; init; }
    /// <summary>Groups the search costed.</summary>
    public required int CandidateGroups { get; init; }
    /// <summary>Groups costed only for <see cref="PairwiseCost"/> (pairs or single layers the search did not need).</summary>
    public required int PictureGroups { get; init; }
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
    /// Most layers per type the exact search runs on. It costs every candidate group up front (Σ_{k ≤ max group}
    /// C(n, k): 78 per type at 12 layers and groups of 2) and CP-SAT proves the optimum; at 12 layers (GPT-2,
    /// LLaMA, ViT here) that took at most 3 s in bench/. Deeper models are not measured, so they get the greedy search.
    /// </summary>
    public const int ExactSearchMaxLayers = 12;

    /// <summary>The search that runs for <paramref name="requested"/> on <paramref name="layers"/> layers per type; exact beyond its limit is refused.</summary>
    public static SearchChoice ChooseSearch(SearchMethod requested, int layers) => requested switch
    {
        SearchMethod.Exact when layers > ExactSearchMaxLayers => throw new UsageException("search",
            $"exact runs on at most {ExactSearchMaxLayers} layers per type, the model has {layers} (use auto or greedy)"),
        SearchMethod.Exact => new(SearchMethod.Exact, requested, $"requested; {layers} layers per type is within its limit of {ExactSearchMaxLayers}"),
        SearchMethod.Greedy => new(SearchMethod.Greedy, requested, "requested"),
        SearchMethod.Auto when layers <= ExactSearchMaxLayers =>
            new(SearchMethod.Exact, requested, $"auto: {layers} layers per type is within the exact search's limit of {ExactSearchMaxLayers}"),
        SearchMethod.Auto => new(SearchMethod.Greedy, requested, $"auto: {layers} layers per type is beyond the exact search's limit of {ExactSearchMaxLayers}"),
        _ => throw new UsageException("search", $"{(int)requested} is not auto, exact or greedy"),
    };

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

    /// <summary>Kept fractions of a group's rank options: 1 − ratio + each offset, those within [0.02, 0.98], once each.</summary>
    public static double[] KeptFractions(PlannerOptions o)
    {
        double x0 = 1 - o.Ratio;
        return o.KeptOffsets.Select(d => Math.Round(x0 + d, 6)).Where(x => x >= 0.02 && x <= 0.98).Distinct().ToArray();
    }

    /// <param name="curvature">Block models already collected (kept by the caller); null: collect them here.</param>
    public static PlannerResult Plan(PretrainedModel model, ActivationGrams grams, LossBatch curvatureBatch, PlannerOptions o,
        IProgress<ProgressTick>? progress = null, IReadOnlyDictionary<string, BlockCurvatureModel>? curvature = null)
    {
        var choice = o.Validate(model);
        var sw = Stopwatch.StartNew();
        bool owns = curvature is null;
        curvature ??= BlockCurvatureModel.Collect(model, curvatureBatch, grams, o, progress);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();

        var costs = new GroupCostEvaluator(model, grams, curvature, o.Trust, o.UseGradient);
        try
        {
            var shared = o.SharedTypes ?? ShareableTypes.Default(model);
            var kept = KeptFractions(o);
            long budget = Budget(model, o.Ratio);
            var (result, greedy, costSeconds) = Search(model, costs, o, shared, kept, budget, choice.Method == SearchMethod.Exact, sw, progress);
            int searched = costs.Evaluated;
            var pairwise = shared.Where(model.ProjectionTypes.Contains).ToDictionary(t => t, t => Pairwise(costs, model, t, kept, 1 - o.Ratio));
            var plan = ToPlan(model, result, o.Ratio) with { Coefficients = o.CoefficientRecipe(curvatureBatch, model.DType) };
            return new PlannerResult
            {
                Plan = plan, Costs = costs, Curvature = curvature, OwnsCurvature = owns, SearchChoice = choice, Search = result, GreedyComparison = greedy,
                PairwiseCost = pairwise, CandidateGroups = searched, PictureGroups = costs.Evaluated - searched,
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

    /// <summary>
    /// The search over group costs. Exact: every candidate group is costed first (in parallel), CP-SAT chooses, and the
    /// greedy search runs on the same cached costs for comparison. Greedy: groups are costed as it asks for them.
    /// </summary>
    private static (SearchResult Result, SearchResult? Greedy, double CostSeconds) Search(PretrainedModel model, GroupCostEvaluator costs, PlannerOptions o,
        IReadOnlyList<string> shared, double[] kept, long budget, bool exact, Stopwatch sw, IProgress<ProgressTick>? progress)
    {
        int n = model.Config.NumLayers;
        var candidateLists = model.ProjectionTypes.ToDictionary(t => t, t => shared.Contains(t)
            ? SetPartitions.Candidates(n, o.MaxGroupSize, o.Contiguous, o.PrivateLayers).ToList()
            : Enumerable.Range(0, n).Select(l => new[] { l }).ToList());
        int total = candidateLists.Values.Sum(c => c.Count), done = 0;

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
            var jobs = model.ProjectionTypes.SelectMany(t => candidateLists[t].Select(g => (Type: t, Layers: g))).ToList();
            var evaluated = SingleThreadedWorkers.Map(jobs, j => Eval(j.Type, j.Layers));
            foreach (var t in model.ProjectionTypes)
                types.Add(new TypeSearch(t, n, jobs.Select((j, i) => (j, i)).Where(x => x.j.Type == t).Select(x => evaluated[x.i]).ToList()));
        }
        double costSeconds = sw.Elapsed.TotalSeconds;
        bool Allowed(string type, int[] layers) =>
            layers.Length == 1 || (shared.Contains(type) && layers.Length <= o.MaxGroupSize && !layers.Any(o.PrivateLayers.Contains)
                                   && (!o.Contiguous || layers[^1] - layers[0] == layers.Length - 1));
        GroupCandidate? Oracle(string type, int[] layers) => Allowed(type, layers) ? Eval(type, layers) : null;
        var typeSizes = model.ProjectionTypes.Select(t => (t, n)).ToList();
        if (exact)
        {
            progress?.Report(new ProgressTick("search", 0, 1, "cp-sat"));
            result = ColoringSearch.Exact(types, budget, o.TimeLimitSeconds);
            progress?.Report(new ProgressTick("search", 1, 1, "cp-sat"));
            // The heuristic on the same (cached) costs: its gap to the optimum is what it would lose on deeper models.
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
        IProgress<ProgressTick>? progress = null)
    {
        var recipe = plan.Coefficients ?? throw new ArgumentException("the plan records no curvature-aligned coefficients (Basis Sharing's need no solver)", nameof(plan));
        if (recipe.CurvatureBatch != curvatureBatch.Description)
            throw new UsageException($"the plan's curvature batch is '{recipe.CurvatureBatch}', this one is '{curvatureBatch.Description}'");
        string dtype = model.DType.ToString().ToLowerInvariant();
        if (recipe.ModelDtype != dtype)
            throw new UsageException($"the plan's curvature was computed on the {recipe.ModelDtype} model, this model is {dtype}");
        var o = PlannerOptions.FromRecipe(recipe, plan.Ratio ?? 0.5); // the ratio chooses ranks; it does not enter the curvature
        var curvature = BlockCurvatureModel.Collect(model, curvatureBatch, grams, o, progress);
        return new AlignedCoefficientSolver(new GroupCostEvaluator(model, grams, curvature, o.Trust, o.UseGradient), curvature);
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

    /// <summary>Extra predicted loss of sharing layers i and j (nominal rank) over keeping each alone.</summary>
    private static double[,] Pairwise(GroupCostEvaluator costs, PretrainedModel model, string type, double[] kept, double x0)
    {
        int n = model.Config.NumLayers;
        var m = new double[n, n];
        RankOption Nominal(int[] layers)
        {
            var c = costs.Evaluate(type, layers, costs.Ranks(type, layers.Length, kept));
            int target = costs.Ranks(type, layers.Length, [x0])[0];
            return c.Options.MinBy(op => Math.Abs(op.Rank - target))!;
        }
        var single = Enumerable.Range(0, n).Select(l => Nominal([l]).Predicted).ToArray();
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                m[i, j] = m[j, i] = Nominal([i, j]).Predicted - single[i] - single[j];
        return m;
    }
}
