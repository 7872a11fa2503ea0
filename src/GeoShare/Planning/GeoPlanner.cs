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
        if (!(o.Ratio > 0 && o.Ratio < 1)) throw new UsageException("ratio", $"must be within (0, 1), got {o.Ratio}");
        var sw = Stopwatch.StartNew();
        bool owns = curvature is null;
        curvature ??= CollectCurvature(model, curvatureBatch, grams, o, progress);
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

    /// <summary>Per-block second-order models: exact (Lanczos + Hutchinson on Hessian-vector products) or K-FAC.</summary>
    public static Dictionary<string, BlockCurvatureModel> CollectCurvature(PretrainedModel model, LossBatch batch, ActivationGrams grams,
        PlannerOptions o, IProgress<ProgressTick>? progress)
    {
        var result = new Dictionary<string, BlockCurvatureModel>();
        var sites = model.Sites.ToList();
        Tensor A(ProjectionSite s) => grams[s.Name].div(grams.Rows);
        if (o.Curvature == CurvatureMethod.Kfac)
        {
            var gradients = Gradients(model, batch, sites);
            var blocks = KfacBlock.Compute(model, batch, sites.Select(s => (s.Name, model.GetProjection(s))).ToList(), o.KfacSamples, o.Seed, progress);
            for (int i = 0; i < sites.Count; i++)
            {
                using var k = blocks[i];
                var (values, vectors) = KroneckerTop(k.A, k.G, o.TopK, o.Seed + i);
                result[sites[i].Name] = BlockCurvatureModel.Create(sites[i].Name, "kfac", gradients[i], values, vectors, A(sites[i]),
                    k.G.diagonal().clone(), k.Trace);
            }
            return result;
        }
        // One gradient graph over every block: the traces come from joint products (each gives a sample of every
        // block's trace), the eigenpairs from products restricted to one block on the same graph.
        var weights = sites.Select(s => model.GetProjection(s) is DenseLinear d ? (Tensor)d.Weight : throw new UsageException("curvature needs the dense model")).ToList();
        using var h = new HessianOperator(() => batch.Loss(model), weights);
        progress?.Report(new ProgressTick("curvature traces", 0, o.TraceProducts, "products"));
        int probe = 0;
        var traces = TraceEstimators.BlockHutchinson(v =>
        {
            var r = h.Apply(v);
            progress?.Report(new ProgressTick("curvature traces", ++probe, o.TraceProducts, "products"));
            return r;
        }, h.BlockSizes, h.DType, o.TraceProducts, o.Seed + 1000);
        var blockGradients = h.Split(h.Gradient);
        progress?.Report(new ProgressTick("curvature", 0, sites.Count, "blocks"));
        for (int i = 0; i < sites.Count; i++)
        {
            int block = i;
            var top = Lanczos.Extreme(v => h.ApplyBlock(block, v), h.BlockSizes[i], o.TopK, SpectrumEnd.Largest, h.DType,
                new LanczosOptions { Tolerance = o.Tolerance, Seed = o.Seed + i });
            result[sites[i].Name] = BlockCurvatureModel.FromEigenpairs(sites[i].Name, ToInOut(model, sites[i], blockGradients[i].unsqueeze(0))[0],
                top.Values, ToInOut(model, sites[i], top.Vectors), traces[i].Value, A(sites[i]), traces[i].StandardError);
            top.Vectors.Dispose();
            progress?.Report(new ProgressTick("curvature", i + 1, sites.Count, "blocks"));
        }
        return result;
    }

    /// <summary>
    /// The k largest eigenpairs of A ⊗ G (as [k, in, out]): products of the top eigenpairs of A and of G, each found
    /// by subspace iteration (a full eigendecomposition of a 3072 × 3072 factor costs more than the whole plan).
    /// </summary>
    public static (double[] Values, Tensor Vectors) KroneckerTop(Tensor a, Tensor g, int k, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (la, va) = SymmetricTop(a, Math.Min(k, (int)a.shape[0]), seed);
        var (lg, vg) = SymmetricTop(g, Math.Min(k, (int)g.shape[0]), seed + 7919);
        var pairs = la.SelectMany((x, i) => lg.Select((y, j) => (V: x * y, I: i, J: j))).OrderByDescending(p => p.V).Take(k).ToArray();
        var vectors = torch.stack(pairs.Select(p => torch.outer(va[TensorIndex.Colon, p.I], vg[TensorIndex.Colon, p.J])).ToArray());
        return (pairs.Select(p => p.V).ToArray(), vectors.MoveToOuterDisposeScope());
    }

    /// <summary>Top-k eigenpairs of a symmetric positive semi-definite matrix by subspace iteration with Rayleigh–Ritz.</summary>
    public static (double[] Values, Tensor Vectors) SymmetricTop(Tensor m, int k, long seed, int iterations = 60)
    {
        using var scope = torch.NewDisposeScope();
        long n = m.shape[0];
        int p = (int)Math.Min(n, k + 8);
        if (n <= 256)
        {
            var (vals, vecs) = torch.linalg.eigh(m);
            var idx = torch.arange(n - 1, n - 1 - k, -1);
            return (vals.index_select(0, idx).data<double>().ToArray(), vecs.index_select(1, idx).MoveToOuterDisposeScope());
        }
        var x = torch.randn(n, p, dtype: ScalarType.Float64, generator: new Generator((ulong)seed));
        for (int it = 0; it < iterations; it++) x = torch.linalg.qr(m.matmul(x)).Q;
        var (tv, tq) = torch.linalg.eigh(x.t().matmul(m).matmul(x));
        var order = torch.arange(p - 1, p - 1 - k, -1);
        return (tv.index_select(0, order).data<double>().ToArray(), x.matmul(tq.index_select(1, order)).MoveToOuterDisposeScope());
    }

    /// <summary>Flat vectors (or weight-shaped ones) in a site's storage layout → [k, in, out] float64.</summary>
    private static Tensor ToInOut(PretrainedModel model, ProjectionSite site, Tensor vectors)
    {
        var layout = model.GetProjection(site).Layout;
        long k = vectors.shape[0];
        var v = vectors.to_type(ScalarType.Float64);
        return layout == WeightLayout.InOut
            ? v.reshape(k, site.InFeatures, site.OutFeatures).contiguous()
            : v.reshape(k, site.OutFeatures, site.InFeatures).transpose(1, 2).contiguous();
    }

    /// <summary>∂L/∂W of every site in one backward pass, as [in, out] float64.</summary>
    private static List<Tensor> Gradients(PretrainedModel model, LossBatch batch, IReadOnlyList<ProjectionSite> sites)
    {
        var weights = sites.Select(s => model.GetProjection(s) is DenseLinear d ? d.Weight : throw new UsageException("curvature needs the dense model")).ToList();
        foreach (var w in weights) w.requires_grad = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            var loss = batch.Loss(model);
            if (!double.IsFinite(loss.to_type(ScalarType.Float64).item<double>())) throw new NumericalException("the loss is not finite on the calibration batch");
            var grads = torch.autograd.grad([loss], weights.Cast<Tensor>().ToList());
            return sites.Select((s, i) => ToInOut(model, s, grads[i].detach().unsqueeze(0))[0].MoveToOuterDisposeScope()).ToList();
        }
        finally
        {
            foreach (var w in weights) w.requires_grad = false;
        }
    }
}
