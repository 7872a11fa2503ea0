using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>
/// The cheap estimate of a group's cost that decides which groups are costed exactly (`--costing screened`).
/// For a group S of one matrix type with summed input second moment Σ XᵀX = SᵀS (Basis Sharing's whitening) the
/// bulk of the cost model, ½ Σⱼ γⱼ δⱼᵀAδⱼ, is at least what the best rank-k basis leaves of the γ-weighted whitened
/// stack S·[W₁Γ₁^½ … Wₙ Γₙ^½]: ½/rows · Σ_{t>k} λ_t(S (Σᵢ WᵢΓᵢWᵢᵀ) Sᵀ). One symmetric eigenvalue decomposition
/// of an [in, in] matrix per group gives it at every rank (no SVD of the [in, n·out] stack, no coefficients, no
/// trust-region solves). The screen's number is the estimated gain of sharing at the nominal kept fraction,
/// estimate(S, k_S) − Σ_{l ∈ S} estimate({l}, k_1): groups whose members would lose least by sharing.
/// </summary>
public static class GroupScreen
{
    /// <summary>Which groups of one type survive the screen, and the screen's estimate of every group it looked at.</summary>
    public sealed record TypeScreen(string Type, IReadOnlyList<int[]> Kept, IReadOnlyDictionary<long, double> Gain, int Screened);

    public static long Mask(IEnumerable<int> layers) => layers.Aggregate(0L, (m, l) => m | (1L << l));

    /// <summary>
    /// Screens the allowed groups of <paramref name="type"/>: every single layer is kept; every allowed pair is estimated and
    /// each layer keeps its <paramref name="partners"/> best pairs; a larger group is estimated only when one of its groups
    /// one smaller was kept and its kept pairs connect it, and each layer keeps its <paramref name="partners"/> best of those.
    /// </summary>
    public static TypeScreen Run(PretrainedModel model, ActivationGrams grams, IReadOnlyDictionary<string, BlockCurvatureModel> curvature,
        string type, IReadOnlyList<int[]> allowed, double keptFraction, int partners)
    {
        int n = model.Config.NumLayers;
        var site0 = model.Site(type, 0);
        int din = site0.InFeatures, dout = site0.OutFeatures;
        var kept = allowed.Where(g => g.Length == 1).ToList();
        var gain = new Dictionary<long, double>();
        int maxSize = allowed.Count == 0 ? 1 : allowed.Max(g => g.Length);
        if (maxSize < 2) return new TypeScreen(type, kept, gain, 0);

        // Per layer: γ-weighted W Γ Wᵀ [in, in] and the single layer's estimate at its nominal rank.
        var q = new Tensor[n];
        try
        {
            SingleThreadedWorkers.Map(Enumerable.Range(0, n).ToList(), l =>
            {
                using var scope = torch.NewDisposeScope();
                var s = model.Site(type, l);
                Tensor w;
                using (torch.no_grad()) w = model.GetProjection(s).WeightInOut().to_type(ScalarType.Float64);
                q[l] = w.mul(curvature[s.Name].OutputWeights.unsqueeze(0)).matmul(w.t()).DetachFromDisposeScope(); // disposed below (a worker thread has no outer scope)
                return 0;
            });
            double Tail(int[] layers)
            {
                using var scope = torch.NewDisposeScope();
                var gram = layers.Select(l => grams[model.Site(type, l).Name]).Aggregate((a, b) => a.add(b, Scalars.One));
                var qs = layers.Select(l => q[l]).Aggregate((a, b) => a.add(b, Scalars.One));
                var s = SharedBasis.WhiteningFactor(gram);
                var k = s.matmul(qs).matmul(s.t());
                var values = torch.linalg.eigvalsh(k.add(k.t(), Scalars.One).MulScalar(0.5)).data<double>().ToArray(); // ascending
                int rank = SharedBasis.RankForKeptFraction(din, dout, layers.Length, keptFraction);
                double tail = 0;
                for (int t = 0; t < values.Length - rank; t++) tail += Math.Max(0, values[t]);
                return tail / (2.0 * grams.Rows);
            }
            var single = new double[n];
            var singles = Enumerable.Range(0, n).ToList();
            var singleValues = SingleThreadedWorkers.Map(singles, l => Tail([l]));
            for (int l = 0; l < n; l++) single[l] = singleValues[l];
            int screened = n;

            var keptBySize = new HashSet<long>[maxSize + 1];
            keptBySize[1] = kept.Select(Mask).ToHashSet();
            var keptPairs = new HashSet<long>();
            for (int size = 2; size <= maxSize; size++)
            {
                var considered = allowed.Where(g => g.Length == size && (size == 2 || Considered(g, keptBySize[size - 1], keptPairs))).ToList();
                var values = SingleThreadedWorkers.Map(considered, g => Tail(g) - g.Sum(l => single[l]));
                screened += considered.Count;
                for (int i = 0; i < considered.Count; i++) gain[Mask(considered[i])] = values[i];
                // Each layer keeps its best `partners` groups of this size (ties by the groups' order: deterministic).
                var chosen = new HashSet<long>();
                for (int l = 0; l < n; l++)
                    foreach (int i in Enumerable.Range(0, considered.Count).Where(i => considered[i].Contains(l))
                                 .OrderBy(i => values[i]).ThenBy(i => i).Take(partners))
                        chosen.Add(Mask(considered[i]));
                keptBySize[size] = chosen;
                if (size == 2) keptPairs = chosen;
                kept.AddRange(considered.Where(g => chosen.Contains(Mask(g))));
            }
            return new TypeScreen(type, kept, gain, screened);
        }
        finally
        {
            foreach (var t in q) t?.Dispose();
        }
    }

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
