using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>
/// Bounds on a group's exact cost (<see cref="GroupCostEvaluator"/>) at each rank option, without the SVD of the
/// stacked matrices or any trust-region solve. The exact cost uses the span of Basis Sharing's basis (the top-k left
/// singular vectors U_k of S·[W₁ … Wₙ], B = S⁻¹U_k) and curvature-aligned coefficients; here the span comes from one
/// eigendecomposition of S (Σ WᵢWᵢᵀ) Sᵀ ([in, in], per-layer WᵢWᵢᵀ precomputed) and each member's cost is bounded for
/// every rank at once (Cholesky factors and forward substitution are nested in the rank):
/// Upper: q at Basis Sharing's coefficients C = (BᵀAB)⁻¹BᵀAW, a point of the trust region, so the aligned solve ends
/// no higher. Lower: the least q over all C with no trust region, ½[bulk_BS + bᵀ(diag(1/c) + P H⁻¹ Pᵀ)⁻¹ b] (b: the
/// top directions' ⟨Vₛ, δ_BS⟩, P their projections on the basis, H the bulk's metric), which the constrained solve cannot
/// beat. Without the first-order term only (<see cref="PlannerOptions.UseGradient"/>: the lower bound is not one).
/// </summary>
public static class GroupScreen
{
    /// <summary>Bounds of one group at its rank options (ascending ranks, as <see cref="GroupCostEvaluator.Ranks"/> gives them).</summary>
    public sealed record GroupBound(string Type, int[] Layers, int[] Ranks, double[] Lower, double[] Upper);

    /// <summary>The groups costed exactly per type, the screen's estimates, and how the selection went.</summary>
    public sealed record Selection(Dictionary<string, List<int[]>> Groups, Dictionary<string, IReadOnlyDictionary<long, double>> Gains, int Screened,
        int Initial, int Rounds, bool Verified, double BoundSeconds, int PrescreenedOut = 0, double PrescreenSeconds = 0);

    public static long Mask(IEnumerable<int> layers) => layers.Aggregate(0L, (m, l) => m | (1L << l));

    /// <summary>Bounds on the resident model and grams (<see cref="Bounds(PlanningInputs, IReadOnlyDictionary{string, BlockCurvatureModel}, string, IReadOnlyList{int[]}, Func{int, IReadOnlyList{int}})"/>).</summary>
    public static GroupBound[] Bounds(PretrainedModel model, ActivationGrams grams, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        string type, IReadOnlyList<int[]> groups, Func<int, IReadOnlyList<int>> ranks) =>
        Bounds(PlanningInputs.Resident(model, grams), curvature, type, groups, ranks);

    /// <summary>
    /// Bounds of <paramref name="groups"/> (all of one type) at <paramref name="ranks"/>(group size). Each layer's
    /// bulk term and top projections are computed once; a group's weights and grams are read for it. Where in ≤ out,
    /// per-layer WWᵀ [in, in] (no larger than W) is held for the type and summed per group; where in &gt; out, the group's
    /// S·ΣWWᵀ·Sᵀ is made as (S·[W₁ … Wₙ])(S·[W₁ … Wₙ])ᵀ, fewer multiply-adds than S·Q·Sᵀ and no [in, in] per layer, or,
    /// where the group is narrower than its input (n·out &lt; in), the span comes from WᵀXᵀXW's [n·out]² eigenvectors instead.
    /// </summary>
    public static GroupBound[] Bounds(PlanningInputs inputs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        string type, IReadOnlyList<int[]> groups, Func<int, IReadOnlyList<int>> ranks)
    {
        var model = inputs.Model;
        var layers = groups.SelectMany(g => g).Distinct().Order().ToList();
        var first = model.Site(type, 0);
        bool products = first.InFeatures <= first.OutFeatures;
        var q = new Tensor?[model.Config.NumLayers];
        var bulkW = new double[model.Config.NumLayers];
        var vDotW = new double[model.Config.NumLayers][];
        try
        {
            SingleThreadedWorkers.Map(layers, l =>
            {
                using var scope = torch.NewDisposeScope();
                var site = model.Site(type, l);
                var m = curvature[site.Name];
                var x = inputs.Weights.Read(site);
                var gram = inputs.Grams.Gram(site.Name);
                bulkW[l] = m.TimesA(x, gram).mul(x).mul(m.OutputWeights).sum().item<double>();
                vDotW[l] = m.Corrections.Length == 0 ? [] : TopProjections(m, x).data<double>().ToArray();
                if (products) q[l] = x.matmul(x.t()).DetachFromDisposeScope(); // disposed below (a worker thread has no outer scope)
                return 0;
            }, _ => WideJobs.IsWide(first.InFeatures, first.OutFeatures, 1));
            return SingleThreadedWorkers.Map(groups, g => Bound(inputs, curvature, type, g, ranks(g.Length).ToArray(), products ? q : null, bulkW, vDotW),
                g => WideJobs.IsWide(first.InFeatures, first.OutFeatures, g.Length));
        }
        finally
        {
            foreach (var t in q) t?.Dispose();
        }
    }

    /// <summary>⟨Vₛ, X⟩ for the block's top directions (K-FAC's as factors: aₛᵀ X gₛ), [k].</summary>
    private static Tensor TopProjections(BlockCurvatureModel m, Tensor x) => m.TopFactors is var (fa, fg)
        ? fa.matmul(x).mul(fg).sum(1)
        : m.TopVectors.mul(x.unsqueeze(0)).sum([1L, 2L]);

    private static GroupBound Bound(PlanningInputs inputs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature, string type,
        int[] layers, int[] ranks, Tensor?[]? q, double[] bulkW, double[][] vDotW)
    {
        using var scope = torch.NewDisposeScope();
        var sites = layers.Select(l => inputs.Model.Site(type, l)).ToArray();
        int kmax = ranks.Max();
        var w = sites.Select(inputs.Weights.Read).ToArray();
        var grams = sites.Select(s => inputs.Grams.Gram(s.Name)).ToArray();
        // The exact cost's span (GroupCostEvaluator: the same LeadingSpan); per-layer WWᵀ summed where held.
        var span = SharedBasis.LeadingSpan(w, grams, kmax, q is null ? null : layers.Select(l => q[l]!).Aggregate((a, b) => a.add(b, Scalars.One)));
        var basis = span.Basis;
        var lower = new double[ranks.Length];
        var upper = new double[ranks.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            // Each member's [K, out] terms die with it (a 1B gate_proj pair's are 80 MB each).
            using var member = torch.NewDisposeScope();
            var m = curvature[sites[i].Name];
            var x = w[i];
            var ab = m.CalibrationRows is long rows && span.GramTimesBasis is { } gb
                ? gb[i].DivScalar(rows)                                             // the span's by-product (down_proj)
                : m.TimesA(basis, grams[i]);                                        // [in, K]
            var l = Cholesky(basis.t().matmul(ab));
            var z = torch.linalg.solve_triangular(l, ab.t().matmul(x), upper: false); // L⁻¹BᵀAW [K, out]
            var gamma = m.OutputWeights;
            // Bulk left at rank r: Σⱼ γⱼ wⱼᵀAwⱼ − Σ_{t<r} Σⱼ γⱼ Z[t, j]².
            var explained = z.PowScalar(2).mul(gamma.unsqueeze(0)).sum(1).cumsum(0).data<double>().ToArray();
            int a = m.Corrections.Length;
            double[][]? proj = null, gram4 = null;
            double[] vw = vDotW[layers[i]];
            double[] c = m.Corrections;
            if (a > 0)
            {
                // P̂ₛ = L⁻¹BᵀVₛ [K, out]: ⟨Vₛ, BC_BS⟩ = Σ_{t<r} ⟨P̂ₛ[t], Z[t]⟩, (P H⁻¹ Pᵀ)ₛₜ = Σ_{t<r} Σⱼ P̂ₛ[t, j] P̂ₜ[t, j] / γⱼ.
                var inv = gamma.ClampMin(1e-300).reciprocal();
                Tensor along, cross;
                if (m.TopFactors is var (fa, fg))
                {
                    // K-FAC's Vₛ = aₛgₛᵀ: P̂ₛ = eₛgₛᵀ with eₛ = L⁻¹Bᵀaₛ, so both sums factor (no [K, out] matrix per direction).
                    var e = torch.linalg.solve_triangular(l, basis.t().matmul(fa.t()), upper: false);  // [K, a]
                    along = e.mul(z.matmul(fg.t())).t().cumsum(1);                                      // [a, K]
                    var gg = fg.mul(inv.unsqueeze(0)).matmul(fg.t());                                   // [a, a]: Σⱼ gₛⱼgₜⱼ/γⱼ
                    cross = e.t().unsqueeze(1).mul(e.t().unsqueeze(0)).mul(gg.unsqueeze(2)).cumsum(2);   // [a, a, K]
                }
                else
                {
                    var bv = basis.t().unsqueeze(0).matmul(m.TopVectors);                               // [a, K, out]
                    var ph = torch.linalg.solve_triangular(l.unsqueeze(0).expand(a, -1, -1), bv, upper: false);
                    along = ph.mul(z.unsqueeze(0)).sum(2).cumsum(1);
                    cross = ph.unsqueeze(1).mul(ph.unsqueeze(0)).mul(inv).sum(3).cumsum(2);
                }
                var alongValues = along.contiguous().data<double>().ToArray();
                int kk = (int)along.shape[1];
                proj = Enumerable.Range(0, a).Select(j => alongValues.AsSpan(j * kk, kk).ToArray()).ToArray();
                var crossValues = cross.contiguous().data<double>().ToArray();
                gram4 = Enumerable.Range(0, a * a).Select(j => crossValues.AsSpan(j * kk, kk).ToArray()).ToArray();
            }
            for (int r = 0; r < ranks.Length; r++)
            {
                int t = ranks[r] - 1;
                double bulk = Math.Max(0, bulkW[layers[i]] - explained[t]);
                double correctionsAtBs = 0, least = 0;
                if (a > 0)
                {
                    var b = Enumerable.Range(0, a).Select(j => proj![j][t] - vw[j]).ToArray();
                    correctionsAtBs = Enumerable.Range(0, a).Sum(j => c[j] * b[j] * b[j]);
                    least = LeastCorrection(b, c, (x1, x2) => gram4![x1 * a + x2][t]);
                }
                upper[r] += 0.5 * (bulk + correctionsAtBs);
                lower[r] += 0.5 * (bulk + least);
            }
            x.Dispose(); // this member's weight is not read again
        }
        return new GroupBound(type, layers, ranks, lower, upper);
    }

    /// <summary>
    /// min over x of ‖x‖²_H + Σₛ cₛ(bₛ + ⟨pₛ, x⟩)² = bᵀ(diag(1/c) + P H⁻¹ Pᵀ)⁻¹b over the active cₛ &gt; 0 (the inactive ones add nothing).
    /// </summary>
    private static double LeastCorrection(double[] b, double[] c, Func<int, int, double> g)
    {
        var act = Enumerable.Range(0, b.Length).Where(j => c[j] > 0).ToArray();
        int n = act.Length;
        if (n == 0) return 0;
        var m = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                m[i, j] = 0.5 * (g(act[i], act[j]) + g(act[j], act[i])) + (i == j ? 1 / c[act[i]] : 0);
        // Cholesky of the small SPD matrix, then bᵀM⁻¹b = ‖L⁻¹b‖².
        var l = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double sum = m[i, j];
                for (int p = 0; p < j; p++) sum -= l[i, p] * l[j, p];
                if (i == j) l[i, i] = Math.Sqrt(Math.Max(sum, 1e-300));
                else l[i, j] = sum / l[j, j];
            }
        double total = 0;
        var y = new double[n];
        for (int i = 0; i < n; i++)
        {
            double sum = b[act[i]];
            for (int p = 0; p < i; p++) sum -= l[i, p] * y[p];
            y[i] = sum / l[i, i];
            total += y[i] * y[i];
        }
        return total;
    }

    private static Tensor Cholesky(Tensor m)
    {
        var sym = m.add(m.t(), Scalars.One).MulScalar(0.5);
        double scale = Math.Max(sym.diagonal().abs().max().item<double>(), 1e-300);
        using var eye = torch.eye(sym.shape[0], dtype: ScalarType.Float64);
        for (double damping = 0; ; damping = damping == 0 ? 1e-12 * scale : damping * 10)
        {
            try
            {
                return torch.linalg.cholesky(sym.add(eye.MulScalar(damping), Scalars.One));
            }
            catch (Exception) when (damping < scale)
            {
                // the basis is numerically rank-deficient in A's metric: damp more
            }
        }
    }

    /// <summary>
    /// Screened costing. Every allowed pair (and every larger group that extends a kept group one smaller and whose pairs
    /// connect it) is bounded; every single layer and each layer's <paramref name="partners"/> best groups of each size by
    /// the upper bound are costed exactly. Then, where the bounds are bounds (no first-order term) and the search is small
    /// enough, cost-then-verify: the exact search over exact costs where known and lower bounds elsewhere; the groups it
    /// chooses that are only bounded are costed and the search runs again, until every chosen group is exact: that plan is
    /// the optimum over all screened groups. <paramref name="verify"/> false (a shard): the first set only.
    /// <paramref name="prescreenPartners"/> &gt; 0: only the pairs <see cref="PairPrescreen"/> keeps (each layer's that many
    /// best partners by affinity) are bounded; the others are left out of the plan's search.
    /// </summary>
    public static Selection Select(PlanningInputs inputs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        GroupCostEvaluator costs, PlannerOptions o, IReadOnlyDictionary<string, List<int[]>> allowed, double[] kept, long budget, bool verify,
        IProgress<ProgressTick>? progress, int prescreenPartners = 0)
    {
        var model = inputs.Model;
        int n = model.Config.NumLayers;
        double x0 = 1 - o.Ratio;
        var groups = new Dictionary<string, List<int[]>>();
        var gains = new Dictionary<string, IReadOnlyDictionary<long, double>>();
        var bounds = new Dictionary<string, Dictionary<long, GroupBound>>();
        int screened = 0, done = 0, prescreenedOut = 0;
        double prescreenSeconds = 0;
        var deferred = new List<(string Type, int[] Layers)>();   // ScreenPartners 0: each layer's best groups, costed only where no verify loop runs
        var clock = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<int> RanksOf(string t, int size) => costs.Ranks(t, size, kept);
        int Nominal(string t, int size, int[] ranks)
        {
            int target = costs.Ranks(t, size, [x0])[0];
            return Array.IndexOf(ranks, ranks.MinBy(r => Math.Abs(r - target)));
        }
        GroupCandidate Exact(string t, int[] g) => costs.Evaluate(t, g, RanksOf(t, g.Length));
        progress?.Report(new ProgressTick("screen", 0, allowed.Count, "types"));
        foreach (var t in model.ProjectionTypes)
        {
            var typeAllowed = allowed[t];
            var singles = typeAllowed.Where(g => g.Length == 1).ToList();
            groups[t] = singles.ToList();
            int maxSize = typeAllowed.Count == 0 ? 1 : typeAllowed.Max(g => g.Length);
            if (maxSize < 2) { progress?.Report(new ProgressTick("screen", ++done, allowed.Count, "types")); continue; }
            // The gains of sharing are against the single layers' upper bounds (what Basis Sharing's coefficients cost them).
            var singleBounds = Bounds(inputs, curvature, t, singles, sz => RanksOf(t, sz));
            var singleCost = singleBounds.ToDictionary(b => b.Layers[0], b => b.Upper[Nominal(t, 1, b.Ranks)]);
            screened += singles.Count;
            var gain = new Dictionary<long, double>();
            var typeBounds = singleBounds.ToDictionary(b => Mask(b.Layers), b => b);
            var keptBySize = new HashSet<long>[maxSize + 1];
            keptBySize[1] = singles.Select(Mask).ToHashSet();
            var keptPairs = new HashSet<long>();
            HashSet<long>? prescreened = null;
            var allowedPairs = typeAllowed.Where(g => g.Length == 2).ToList();
            if (prescreenPartners > 0 && allowedPairs.Count > 0)
            {
                var started = clock.Elapsed.TotalSeconds;
                var pairLayers = allowedPairs.SelectMany(g => g).Distinct().Order().ToList();
                int nominal = costs.Ranks(t, 1, [x0])[0];
                var affinity = PairPrescreen.Affinities(inputs, t, pairLayers, nominal, o.Seed + 104729);
                prescreened = PairPrescreen.Keep(affinity, allowedPairs, prescreenPartners);
                prescreenedOut += allowedPairs.Count - prescreened.Count;
                prescreenSeconds += clock.Elapsed.TotalSeconds - started;
            }
            for (int size = 2; size <= maxSize; size++)
            {
                var considered = typeAllowed.Where(g => g.Length == size
                    && (size == 2 ? prescreened?.Contains(Mask(g)) ?? true : Considered(g, keptBySize[size - 1], keptPairs))).ToList();
                var b = Bounds(inputs, curvature, t, considered, sz => RanksOf(t, sz));
                screened += considered.Count;
                var values = new double[considered.Count];
                for (int i = 0; i < considered.Count; i++)
                {
                    var g = considered[i];
                    typeBounds[Mask(g)] = b[i];
                    values[i] = b[i].Upper[Nominal(t, size, b[i].Ranks)] - g.Sum(l => singleCost.TryGetValue(l, out double v) ? v : 0);
                    gain[Mask(g)] = values[i];
                }
                // Each layer keeps its best `partners` groups of this size (ties by the groups' order: deterministic); with 0,
                // none is costed first (the verify loop costs what the search chooses) and the best one grows larger groups.
                var chosen = new HashSet<long>();
                for (int l = 0; l < n; l++)
                    foreach (int i in Enumerable.Range(0, considered.Count).Where(i => considered[i].Contains(l))
                                 .OrderBy(i => values[i]).ThenBy(i => i).Take(Math.Max(1, o.ScreenPartners)))
                        chosen.Add(Mask(considered[i]));
                keptBySize[size] = chosen;
                if (size == 2) keptPairs = chosen;
                var best = considered.Where(g => chosen.Contains(Mask(g)));
                if (o.ScreenPartners > 0) groups[t].AddRange(best);
                else deferred.AddRange(best.Select(g => (t, g)));
            }
            gains[t] = gain;
            bounds[t] = typeBounds;
            progress?.Report(new ProgressTick("screen", ++done, allowed.Count, "types"));
        }
        double boundSeconds = clock.Elapsed.TotalSeconds;
        // The verify search's (group, rank) choices: every single layer and every bounded group (single layers of shared types among them).
        long variables = (groups.Sum(kv => (long)kv.Value.Count(g => g.Length == 1 && !(bounds.GetValueOrDefault(kv.Key)?.ContainsKey(Mask(g)) ?? false)))
            + bounds.Values.Sum(v => (long)v.Count)) * Math.Max(1, kept.Length);
        bool verifiable = !o.UseGradient && variables <= GeoPlanner.ExactSearchMaxVariables;
        // Without a verify loop (here or in the run that finishes a shard's cells) the first set is all that is searched.
        if (!verifiable) foreach (var (t, g) in deferred) groups[t].Add(g);
        // With one (and not a shard, whose first set is what it costs), bounded single layers wait until the search chooses them.
        if (verify && verifiable && !o.CostSinglesFirst)
            foreach (var (t, typeBounds) in bounds) groups[t].RemoveAll(g => g.Length == 1 && typeBounds.ContainsKey(Mask(g)));
        int initial = groups.Values.Sum(v => v.Count);
        if (!verify || !verifiable) return new(groups, gains, screened, initial, 0, false, boundSeconds, prescreenedOut, prescreenSeconds);

        // Cost-then-verify.
        int rounds = 0;
        while (true)
        {
            var costed = groups.ToDictionary(kv => kv.Key, kv => kv.Value.Select(Mask).ToHashSet());
            var exact = Jobs(model, groups);
            int toCost = exact.Count(j => !costs.IsCached(j.Type, j.Layers)), costedNow = 0;
            progress?.Report(new ProgressTick("group costs", 0, toCost, "groups"));
            var evaluated = SingleThreadedWorkers.Map(exact, j =>
            {
                bool cached = costs.IsCached(j.Type, j.Layers);
                var c = Exact(j.Type, j.Layers);
                if (!cached) progress?.Report(new ProgressTick("group costs", Math.Min(Interlocked.Increment(ref costedNow), toCost), toCost, "groups"));
                return c;
            }, j => !costs.IsCached(j.Type, j.Layers) && costs.IsWide(j.Type, j.Layers), j => costs.Work(j.Type, j.Layers));
            var types = model.ProjectionTypes.Select(t => new TypeSearch(t, n,
                evaluated.Where(c => c.Type == t)
                    .Concat(bounds.GetValueOrDefault(t)?.Values.Where(b => !costed[t].Contains(Mask(b.Layers))).Select(b => AsCandidate(model, b)) ?? [])
                    .ToList())).ToList();
            rounds++;
            progress?.Report(new ProgressTick("verify", rounds, rounds, "searches"));
            var result = ColoringSearch.Exact(types, budget, o.TimeLimitSeconds);
            var missing = result.Groups.Where(g => !costed[g.Type].Contains(Mask(g.Layers))).ToList();
            if (missing.Count == 0) return new(groups, gains, screened, initial, rounds, result.Status == "optimal", boundSeconds, prescreenedOut, prescreenSeconds);
            foreach (var g in missing) groups[g.Type].Add(g.Layers);
        }
    }

    /// <summary>A bounded group as a search candidate: its lower bounds as costs.</summary>
    private static GroupCandidate AsCandidate(PretrainedModel model, GroupBound b)
    {
        var site = model.Site(b.Type, 0);
        return new GroupCandidate(b.Type, b.Layers, b.Ranks.Select((k, r) =>
            new RankOption(k, SharedBasis.BasisParameters(site.InFeatures, site.OutFeatures, b.Layers.Length, k), b.Lower[r], 0, 0, 0)).ToList());
    }

    private static List<(string Type, int[] Layers)> Jobs(PretrainedModel model, IReadOnlyDictionary<string, List<int[]>> groups) =>
        model.ProjectionTypes.SelectMany(t => groups[t].Select(g => (Type: t, Layers: g))).ToList();

    /// <summary>A group of three or more is looked at when it extends a kept group one smaller and at least size − 1 of its pairs were kept.</summary>
    private static bool Considered(int[] g, HashSet<long> keptSmaller, HashSet<long> keptPairs)
    {
        long mask = Mask(g);
        if (!g.Any(l => keptSmaller.Contains(mask & ~(1L << l)))) return false;
        int pairs = 0;
        for (int a = 0; a < g.Length; a++)
            for (int b = a + 1; b < g.Length; b++)
                if (keptPairs.Contains((1L << g[a]) | (1L << g[b]))) pairs++;
        return pairs >= g.Length - 1;
    }
}
