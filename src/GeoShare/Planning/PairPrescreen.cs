using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>
/// Which pairs of one type's layers are worth bounding at all, for models where bounding every pair would dominate the plan
/// (<see cref="GeoPlanner.ChoosePrescreen"/>). A pair's bound costs an [in, in] eigendecomposition and the members'
/// products (about 2 s at d2048 here; 120 pairs a type at 16 layers, 496 at 32); this costs O(in·out·q) a layer and
/// O(in·q·m) a pair. Each layer's matrix W [in, out] in the type's input metric (S with SᵀS the layers' mean calibration
/// gram, Basis Sharing's whitening shared by the type; √ of its diagonal for inputs wider than <see cref="FullWhiteningMax"/>)
/// gets a randomized range finder's leading subspace Q (q = min(nominal rank, 256) directions, one power iteration) and an
/// m = 128 column Gaussian sketch Y = SWΩ. With e(i, j) the share of Yⱼ's energy outside Qᵢ (E‖QᵀY‖² = m‖QᵀSW‖²), a pair's
/// affinity is −[(e(i, j) − e(j, j)) + (e(j, i) − e(i, i))]: what each member's energy loses in the partner's subspace beyond
/// what its own leaves out, so that a hard-to-compress partner is not mistaken for a misaligned one. Basis Sharing's cost of
/// a pair is the energy its shared span leaves out. Each layer keeps its best partners; only those pairs are bounded. A
/// heuristic: the screened plan is then the optimum over the kept pairs (bench/scale.md compares it with the plan over all
/// pairs on the bundled models). Float32: it only ranks.
/// </summary>
public static class PairPrescreen
{
    public const int MaxSubspace = 256;
    public const int SketchColumns = 128;
    /// <summary>Widest input whitened by the full factor; wider ones (a 1B down_proj) are scaled by the gram's diagonal.</summary>
    public const int FullWhiteningMax = 4096;

    /// <summary>Affinity of every pair of <paramref name="layers"/> (key: the pair's layer mask), deterministic for a seed.</summary>
    public static Dictionary<long, double> Affinities(PlanningInputs inputs, string type, IReadOnlyList<int> layers, int subspace, long seed)
    {
        var model = inputs.Model;
        var first = model.Site(type, 0);
        int q = Math.Clamp(subspace, 1, Math.Min(MaxSubspace, Math.Min(first.InFeatures, first.OutFeatures)));
        // The type's input metric: S with SᵀS = the layers' mean calibration gram (Basis Sharing's whitening, one for the type),
        // or, for inputs wider than FullWhiteningMax, D = √ of its diagonal (a 1B down_proj's 8192² gram is 537 MB).
        bool full = first.InFeatures <= FullWhiteningMax;
        Tensor? sum = null;
        foreach (int l in layers)
        {
            using var scope = torch.NewDisposeScope();
            using var gram = inputs.Grams.Gram(model.Site(type, l).Name);
            var part = full ? gram : gram.diagonal();
            if (sum is null) sum = part.clone().DetachFromDisposeScope();
            else sum.add_(part, Scalars.One);
        }
        var bases = new Tensor[layers.Count];
        var sketches = new Tensor[layers.Count];
        try
        {
            Tensor scale;
            using (var scope = torch.NewDisposeScope())
            {
                sum!.DivScalar_(layers.Count * Math.Max(1, inputs.Grams.Rows));
                scale = (full ? SharedBasis.WhiteningFactor(sum) : sum.ClampMin(1e-30).sqrt().unsqueeze(1)).to_type(ScalarType.Float32).DetachFromDisposeScope();
            }
            sum.Dispose();
            // One Ω per type (the same for every layer), so that equal matrices sketch equally.
            var omega = torch.randn(first.OutFeatures, q + SketchColumns, dtype: ScalarType.Float32, generator: new Generator((ulong)seed));
            try
            {
                SingleThreadedWorkers.Map(Enumerable.Range(0, layers.Count).ToList(), i =>
                {
                    using var scope = torch.NewDisposeScope();
                    var w = inputs.Weights.Read(model.Site(type, layers[i])).to_type(ScalarType.Float32);
                    w = full ? scale.matmul(w) : w.mul(scale);                                                     // SW or DW [in, out]
                    var y = w.matmul(omega);                                                                       // [in, q + m]
                    var range = torch.linalg.qr(y.narrow(1, 0, q)).Q;
                    range = torch.linalg.qr(w.matmul(w.t().matmul(range))).Q;                                       // one power iteration
                    bases[i] = range.contiguous().DetachFromDisposeScope();
                    sketches[i] = y.narrow(1, q, SketchColumns).contiguous().DetachFromDisposeScope();
                    return 0;
                });
            }
            finally
            {
                omega.Dispose();
                scale.Dispose();
            }
            // Share of each sketch the layer's own subspace leaves out (its own compressibility), and what a partner's leaves out.
            var energy = sketches.Select(y => { using var s = torch.NewDisposeScope(); return Math.Max(y.PowScalar(2).sum().item<float>(), 1e-30); }).ToArray();
            double Missed(int basis, int sketch)
            {
                using var scope = torch.NewDisposeScope();
                return Math.Max(0, 1 - bases[basis].t().matmul(sketches[sketch]).PowScalar(2).sum().item<float>() / energy[sketch]);
            }
            var own = Enumerable.Range(0, layers.Count).Select(i => Missed(i, i)).ToArray();
            var affinity = new Dictionary<long, double>();
            for (int i = 0; i < layers.Count; i++)
                for (int j = i + 1; j < layers.Count; j++)
                    affinity[(1L << layers[i]) | (1L << layers[j])] = -((Missed(i, j) - own[j]) + (Missed(j, i) - own[i]));
            return affinity;
        }
        finally
        {
            foreach (var t in bases.Concat(sketches)) t?.Dispose();
        }
    }

    /// <summary>
    /// The pairs each layer keeps: its <paramref name="partners"/> highest-affinity pairs among <paramref name="pairs"/>
    /// (ties by the pairs' order), united over the layers.
    /// </summary>
    public static HashSet<long> Keep(IReadOnlyDictionary<long, double> affinity, IReadOnlyList<int[]> pairs, int partners)
    {
        var kept = new HashSet<long>();
        foreach (int l in pairs.SelectMany(p => p).Distinct().Order())
            foreach (var p in pairs.Select((p, i) => (P: p, I: i)).Where(x => x.P.Contains(l))
                         .OrderByDescending(x => affinity[GroupScreen.Mask(x.P)]).ThenBy(x => x.I).Take(partners))
                kept.Add(GroupScreen.Mask(p.P));
        return kept;
    }
}
