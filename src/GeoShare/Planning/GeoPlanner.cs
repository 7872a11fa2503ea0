using System.Diagnostics;
using GeoShare.Curvature;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

public sealed record PlannerOptions
{
    /// <summary>Fraction of the shareable matrices' parameters to remove.</summary>
    public required double Ratio { get; init; }
    public CurvatureMethod Curvature { get; init; } = CurvatureMethod.Exact;
    /// <summary>Top eigenpairs per block (exact: Lanczos; K-FAC: of A ⊗ G).</summary>
    public int TopK { get; init; } = 4;
    /// <summary>Lanczos residual tolerance: a cost model needs the directions, not eigenvalues to many digits.</summary>
    public double Tolerance { get; init; } = 1e-2;
    /// <summary>Hutchinson probes for each block's trace (exact curvature).</summary>
    public int TraceProducts { get; init; } = 8;
    public int KfacSamples { get; init; } = 4;
    public int MaxGroupSize { get; init; } = 2;
    public bool Contiguous { get; init; }
    public IReadOnlySet<int> PrivateLayers { get; init; } = new HashSet<int>();
    public IReadOnlyList<string>? SharedTypes { get; init; }
    /// <summary>τ: ‖δ‖ ≤ (1 + τ)‖δ_BasisSharing‖ per layer.</summary>
    public double Trust { get; init; } = 0.5;
    /// <summary>
    /// Include the first-order term ⟨g, δ⟩. Off by default: at a trained minimum its expectation is about zero, and
    /// the gradient of a few calibration windows is noise that a trust-region solve would exploit (predicting a loss
    /// decrease that other data does not show).
    /// </summary>
    public bool UseGradient { get; init; }
    /// <summary>"exact" (CP-SAT, up to 12 layers per type) or "greedy".</summary>
    public string Search { get; init; } = "exact";
    public double TimeLimitSeconds { get; init; } = 120;
    /// <summary>Rank options of a group: kept fractions 1 − ratio + these offsets.</summary>
    public double[] KeptOffsets { get; init; } = [-0.2, -0.1, 0, 0.1, 0.2];
    public long Seed { get; init; }
}

public sealed class PlannerResult : IDisposable
{
    public required SharingPlan Plan { get; init; }
    public required GroupCostEvaluator Costs { get; init; }
    public required IReadOnlyDictionary<string, BlockCurvatureModel> Curvature { get; init; }
    public required SearchResult Search { get; init; }
    public SearchResult? GreedyComparison { get; init; }
    public required Dictionary<string, double[,]> PairwiseCost { get; init; }
    public required int CandidateGroups { get; init; }
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
    /// <param name="curvature">Block models already collected (kept by the caller); null: collect them here.</param>
    public static PlannerResult Plan(PretrainedModel model, ActivationGrams grams, LossBatch curvatureBatch, PlannerOptions o,
        IProgress<ProgressTick>? progress = null, IReadOnlyDictionary<string, BlockCurvatureModel>? curvature = null)
    {
        if (!(o.Ratio > 0 && o.Ratio < 1)) throw new UsageException($"--ratio must be within (0, 1), got {o.Ratio}");
        var sw = Stopwatch.StartNew();
        bool owns = curvature is null;
        curvature ??= BlockCurvatureModel.Collect(model, curvatureBatch, grams, o, progress);
        double curvatureSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();

        var costs = new GroupCostEvaluator(model, grams, curvature, o.Trust, o.UseGradient);
        var shared = o.SharedTypes ?? ShareableTypes.Default(model);
        int n = model.Config.NumLayers;
        double x0 = 1 - o.Ratio;
        var kept = o.KeptOffsets.Select(d => Math.Round(x0 + d, 6)).Where(x => x >= 0.02 && x <= 0.98).Distinct().ToArray();
        var candidateLists = model.ProjectionTypes.ToDictionary(t => t, t => shared.Contains(t)
            ? SetPartitions.Candidates(n, o.MaxGroupSize, o.Contiguous, o.PrivateLayers).ToList()
            : Enumerable.Range(0, n).Select(l => new[] { l }).ToList());
        int total = candidateLists.Values.Sum(c => c.Count), done = 0;
        bool exact = o.Search == "exact" && n <= 12;
        long budget = (long)Math.Floor(x0 * model.ProjectionTypes.Sum(t => (double)n * model.Site(t, 0).InFeatures * model.Site(t, 0).OutFeatures));

        GroupCandidate Cost(string type, int[] layers) => costs.Evaluate(type, layers, costs.Ranks(type, layers.Length, kept));
        GroupCandidate Eval(string type, int[] layers)
        {
            var c = Cost(type, layers);
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
            var evaluated = ParallelEvaluate(jobs, j => Eval(j.Type, j.Layers));
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

        var plan = ToPlan(model, result, o.Ratio);
        var pairwise = shared.Where(model.ProjectionTypes.Contains).ToDictionary(t => t, t => Pairwise(costs, model, t, kept, x0));
        return new PlannerResult
        {
            Plan = plan, Costs = costs, Curvature = curvature, OwnsCurvature = owns, Search = result, GreedyComparison = greedy, PairwiseCost = pairwise,
            CandidateGroups = costs.Evaluated, CurvatureSeconds = curvatureSeconds, CostSeconds = costSeconds, Budget = budget,
        };
    }

    /// <summary>
    /// Group costs on every core: each worker runs single-threaded tensor code (the matrices are small; two
    /// workers beat one worker with two threads, and four threads on two cores thrash).
    /// </summary>
    private static T[] ParallelEvaluate<TJob, T>(IReadOnlyList<TJob> jobs, Func<TJob, T> work)
    {
        var results = new T[jobs.Count];
        int workers = Math.Max(1, torch.get_num_threads());
        if (workers == 1)
        {
            for (int i = 0; i < jobs.Count; i++) results[i] = work(jobs[i]);
            return results;
        }
        torch.set_num_threads(1);
        try
        {
            Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = workers }, i => results[i] = work(jobs[i]));
        }
        finally
        {
            torch.set_num_threads(workers);
        }
        return results;
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
