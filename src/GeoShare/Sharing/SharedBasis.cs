using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>
/// The linear algebra of sharing, in float64. Weights are [in, out] (y = x W). For a group of layers with
/// stacked weights W = [W₁ … Wₙ] and input second moment XᵀX = SᵀS (S upper triangular), the rank-k
/// representation minimising Σᵢ ‖Xᵢ(Wᵢ − Ŵᵢ)‖² … over the group's inputs is Basis Sharing's:
/// SVD of S·W = UΣVᵀ, shared basis B = S⁻¹U_kΣ_k [in, k], coefficients C = V_kᵀ split per layer [k, out].
/// </summary>
public static class SharedBasis
{
    /// <summary>S with SᵀS = XᵀX + δI: Cholesky, adding damping until it succeeds.</summary>
    /// <param name="consume">Free <paramref name="gram"/> once its factor exists, before the factor's transposed copy is made
    /// (a 1B down_proj: three 537 MB matrices at once become two).</param>
    public static Tensor WhiteningFactor(Tensor gram, bool consume = false)
    {
        long n = gram.shape[0];
        double scale = Math.Max(gram.diagonal().mean().item<double>(), 1e-12);
        for (double damping = 0; ; damping = damping == 0 ? 1e-8 * scale : damping * 10)
        {
            try
            {
                // Undamped: the gram itself (no n×n identity and copies: 8192² float64 is 537 MB each).
                if (damping == 0)
                {
                    using var l0 = torch.linalg.cholesky(gram);
                    if (consume) gram.Dispose();
                    return l0.t().contiguous();
                }
                using var eye = torch.eye(n, dtype: ScalarType.Float64);
                using var a = gram.add(eye.MulScalar(damping), Scalars.One);
                using var l = torch.linalg.cholesky(a);
                if (consume) gram.Dispose();
                return l.t().contiguous();
            }
            catch (Exception) when (damping < scale)
            {
                // not positive definite yet: damp more
            }
        }
    }

    public sealed record GroupBasis(Tensor Basis, Tensor[] Coefficients, double[] SingularValues, double RetainedEnergy);

    /// <param name="weights">[in, out] matrices of the group, float64.</param>
    /// <param name="gram">Σ over the group's layers of XᵀX.</param>
    public static GroupBasis Compute(IReadOnlyList<Tensor> weights, Tensor gram, int rank, bool consumeInputs = false)
    {
        using var scope = torch.NewDisposeScope();
        long din = weights[0].shape[0], dout = weights[0].shape[1];
        int full = SharingPlan.FullRank((int)din, (int)dout, weights.Count);
        if (rank < 1 || rank > full) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} outside 1..{full}");
        // consumeInputs: the gram and the weights are freed as soon as they are used, before the SVD's own memory (a
        // down_proj pair of a 1B model: 537 MB of gram and 268 MB of weights less at its peak).
        if (NarrowerThanInput(din, dout, weights.Count)) return FromOutputGram(weights, gram, rank, consumeInputs);
        var s = WhiteningFactor(gram, consumeInputs);
        var stacked = torch.cat(weights.ToList(), 1);                    // [in, n·out]
        if (consumeInputs) foreach (var w in weights) w.Dispose();
        var whitened = s.matmul(stacked);
        if (consumeInputs) stacked.Dispose();
        var (u, sigma, vh) = torch.linalg.svd(whitened, fullMatrices: false);
        if (consumeInputs) whitened.Dispose();
        var uk = u.narrow(1, 0, rank);
        var sk = sigma.narrow(0, 0, rank);
        var basis = torch.linalg.solve_triangular(s, uk.mul(sk.unsqueeze(0)), upper: true); // S⁻¹ U_k Σ_k
        return Assemble(basis, vh.narrow(0, 0, rank), sigma, weights.Count, dout, rank);
    }

    /// <summary>
    /// A basis [in, rank] whose leading r columns span those of <see cref="Compute"/>'s basis for every r ≤ rank (the
    /// columns scaled differently): what the planner's costs and bounds need, since they solve their own coefficients. From
    /// the eigenvectors of K = (SW)(SW)ᵀ ([in, in]; S⁻¹U_k) instead of the SVD of SW, or, narrower than the input, W V_k.
    /// <paramref name="products"/>: Σ WᵢWᵢᵀ where the caller holds it (then K = S·ΣWWᵀ·Sᵀ).
    /// </summary>
    public static Tensor LeadingSpan(IReadOnlyList<Tensor> weights, Tensor gram, int rank, Tensor? products = null)
    {
        using var scope = torch.NewDisposeScope();
        var stacked = weights.Count == 1 ? weights[0] : torch.cat(weights.ToList(), 1);
        if (NarrowerThanInput(stacked.shape[0], weights[0].shape[1], weights.Count))
            return stacked.matmul(OutputSideSpectrum(stacked, GramTimesStacked(stacked, [gram], null, false), rank).Vk).MoveToOuterDisposeScope();
        var s = WhiteningFactor(gram);
        Tensor k;
        if (products is not null) k = s.matmul(products).matmul(s.t());
        else
        {
            var sw = s.matmul(stacked);
            k = sw.matmul(sw.t());
        }
        var (_, vectors) = torch.linalg.eigh(k.add(k.t(), Scalars.One).MulScalar(0.5)); // ascending
        var u = vectors.narrow(1, vectors.shape[1] - rank, rank).flip(1);           // top rank, descending
        return torch.linalg.solve_triangular(s, u, upper: true).MoveToOuterDisposeScope(); // S⁻¹U, column by column
    }

    /// <summary>
    /// A group's <see cref="LeadingSpan(IReadOnlyList{Tensor}, Tensor, int, Tensor?)"/> from its members' grams, with the
    /// by-products that the costs of a group narrower than its input (down_proj) need again: each member's XᵢᵀXᵢ·Wᵢ and
    /// XᵢᵀXᵢ·B, which they would otherwise recompute at [in]²·(out + rank) each (null where not kept).
    /// </summary>
    public sealed record Span(Tensor Basis, Tensor[]? GramTimesWeight, Tensor[]? GramTimesBasis);

    /// <summary>The most bytes of members' XᵢᵀXᵢ·W products a narrow group's span holds at once to hand them on (beyond, they are summed and dropped).</summary>
    public const long SpanProductBytes = 256L << 20;

    /// <param name="grams">Each member's XᵀX (borrowed). Where the group is narrower than its input, Σᵢ XᵢᵀXᵢ·W is summed
    /// member by member, never the [in, in] sum of the grams (a 1B down_proj pair: 537 MB less); otherwise the summed gram
    /// whitens.</param>
    /// <param name="products">Σ WᵢWᵢᵀ where the caller holds it.</param>
    public static Span LeadingSpan(IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor> grams, int rank, Tensor? products = null)
    {
        using var scope = torch.NewDisposeScope();
        long din = weights[0].shape[0], dout = weights[0].shape[1];
        int n = weights.Count;
        if (!NarrowerThanInput(din, dout, n))
        {
            var gram = grams.Count == 1 ? grams[0] : grams.Aggregate((a, b) => a.add(b, Scalars.One));
            return new Span(LeadingSpan(weights, gram, rank, products).MoveToOuterDisposeScope(), null, null);
        }
        var stacked = n == 1 ? weights[0] : torch.cat(weights.ToList(), 1);    // [in, n·out]
        // Each member's XᵢᵀXᵢ·W [in, n·out] is kept until the span exists where they fit (a 32 × d1024 down_proj pair: 134 MB).
        var parts = (long)n * din * n * dout * 8 <= SpanProductBytes ? new Tensor[n] : null;
        var (_, vk) = OutputSideSpectrum(stacked, GramTimesStacked(stacked, grams, parts, false), rank);
        var basis = stacked.matmul(vk).MoveToOuterDisposeScope();
        if (parts is null) return new Span(basis, null, null);
        var timesWeight = parts.Select((p, i) => p.narrow(1, i * dout, dout).contiguous().MoveToOuterDisposeScope()).ToArray();
        var timesBasis = parts.Select(p => p.matmul(vk).MoveToOuterDisposeScope()).ToArray();
        return new Span(basis, timesWeight, timesBasis);
    }

    /// <summary>Whether a group's basis comes from its output side (<see cref="OutputSideSpectrum"/>): n·out &lt; in, a down_proj.</summary>
    public static bool NarrowerThanInput(long inFeatures, long outFeatures, int layers) => layers * outFeatures < inFeatures;

    /// <summary>
    /// Σ (all, descending) and V_k [n·out, k] of S·W (SᵀS = XᵀX) from the eigenpairs of WᵀXᵀXW = (SW)ᵀ(SW), without S:
    /// S⁻¹U_kΣ_k = W V_k. <paramref name="gw"/>: XᵀX·W (borrowed).
    /// </summary>
    private static (Tensor Sigma, Tensor Vk) OutputSideSpectrum(Tensor stacked, Tensor gw, int rank)
    {
        var m = stacked.t().matmul(gw);
        var (eval, evec) = torch.linalg.eigh(m.add(m.t(), Scalars.One).MulScalar(0.5));  // ascending
        m.Dispose();
        return (eval.flip(0).ClampMin(0).sqrt(), evec.narrow(1, evec.shape[1] - rank, rank).flip(1));
    }

    /// <summary>
    /// Σᵢ XᵢᵀXᵢ·W [in, n·out] summed member by member, never the [in, in] sum of the grams. <paramref name="parts"/> (length
    /// n, or null): where each member's XᵢᵀXᵢ·W is kept; <paramref name="consumeGrams"/> frees each gram once multiplied.
    /// </summary>
    private static Tensor GramTimesStacked(Tensor stacked, IEnumerable<Tensor> grams, Tensor[]? parts, bool consumeGrams)
    {
        Tensor? sum = null;
        int i = 0;
        foreach (var g in grams)
        {
            var part = g.matmul(stacked);
            if (consumeGrams) g.Dispose();
            if (parts is not null) parts[i] = part;
            if (sum is null) sum = parts is { Length: > 1 } ? part.clone() : part;
            else
            {
                sum.add_(part, Scalars.One);
                if (parts is null) part.Dispose();
            }
            i++;
        }
        return sum ?? throw new ArgumentException("no grams");
    }

    /// <summary>The group's basis and its members' coefficients (C = [k, n·out] split per layer), spectrum and retained energy.</summary>
    private static GroupBasis Assemble(Tensor basis, Tensor coeff, Tensor sigma, int layers, long dout, int rank)
    {
        var parts = Enumerable.Range(0, layers).Select(i => coeff.narrow(1, i * dout, dout).contiguous().MoveToOuterDisposeScope()).ToArray();
        var sv = sigma.data<double>().ToArray();
        double total = sv.Sum(x => x * x), kept = sv.Take(rank).Sum(x => x * x);
        return new GroupBasis(basis.contiguous().MoveToOuterDisposeScope(), parts, sv, total > 0 ? kept / total : 1);
    }

    /// <summary>
    /// The same basis without S where the group is narrower than its input (n·out &lt; in: a down_proj): SW = UΣVᵀ gives
    /// S⁻¹U_kΣ_k = W V_k, and V, Σ² are the eigenpairs of WᵀXᵀXW = (SW)ᵀ(SW), [n·out]² instead of the [in]² factor
    /// (a 1B down_proj: 134 MB instead of 537 MB, and no Cholesky to damp where fewer calibration rows than inputs
    /// leave XᵀX singular).
    /// </summary>
    private static GroupBasis FromOutputGram(IReadOnlyList<Tensor> weights, Tensor gram, int rank, bool consumeInputs) =>
        ComputeNarrow(weights, [gram], rank, consumeInputs);

    /// <summary>
    /// <see cref="Compute"/> for a group narrower than its input (<see cref="NarrowerThanInput"/>) from its members' grams,
    /// enumerated one at a time: Σᵢ XᵢᵀXᵢ·W is summed member by member, never the [in, in] sum of the grams, and with
    /// <paramref name="consumeInputs"/> each gram is freed once multiplied (a 1B down_proj pair: one 537 MB gram at a time
    /// instead of the sum beside both).
    /// </summary>
    public static GroupBasis ComputeNarrow(IReadOnlyList<Tensor> weights, IEnumerable<Tensor> grams, int rank, bool consumeInputs = false)
    {
        using var scope = torch.NewDisposeScope();
        long din = weights[0].shape[0], dout = weights[0].shape[1];
        if (!NarrowerThanInput(din, dout, weights.Count)) throw new ArgumentException($"a group of {weights.Count} [{din}, {dout}] matrices is not narrower than its input");
        int full = SharingPlan.FullRank((int)din, (int)dout, weights.Count);
        if (rank < 1 || rank > full) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} outside 1..{full}");
        var stacked = weights.Count == 1 && !consumeInputs ? weights[0] : torch.cat(weights.ToList(), 1); // [in, n·out]
        if (consumeInputs) foreach (var w in weights) w.Dispose();
        var gw = GramTimesStacked(stacked, grams, null, consumeInputs);
        var (sigma, vk) = OutputSideSpectrum(stacked, gw, rank);
        gw.Dispose();
        return Assemble(stacked.matmul(vk), vk.t(), sigma, weights.Count, dout, rank); // W V_k, C = V_kᵀ
    }

    /// <summary>Least-squares coefficients for a fixed basis: C = (BᵀAB)⁻¹ BᵀA W, with A = XᵀX of this layer's inputs.</summary>
    public static Tensor Refit(Tensor basis, Tensor weight, Tensor gram)
    {
        using var scope = torch.NewDisposeScope();
        var ab = gram.matmul(basis);
        var lhs = basis.t().matmul(ab);
        var rhs = ab.t().matmul(weight);
        double damping = 1e-10 * Math.Max(lhs.diagonal().abs().mean().item<double>(), 1e-300);
        var c = torch.linalg.solve(lhs.add(torch.eye(lhs.shape[0], dtype: ScalarType.Float64).MulScalar(damping), Scalars.One), rhs);
        return c.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One matrix for a color: the plain mean, or with input statistics the minimiser of Σᵢ ‖Xᵢ(W − Wᵢ)‖²,
    /// W = (Σ Aᵢ)⁻¹ Σ Aᵢ Wᵢ (the K-FAC A-weighted mean).
    /// </summary>
    public static Tensor Tie(IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor>? grams)
    {
        using var scope = torch.NewDisposeScope();
        if (grams is null) return torch.stack(weights.ToList()).mean([0L]).MoveToOuterDisposeScope();
        var a = grams.Aggregate((x, y) => x.add(y, Scalars.One));
        var rhs = weights.Zip(grams, (w, g) => g.matmul(w)).Aggregate((x, y) => x.add(y, Scalars.One));
        double damping = 1e-10 * Math.Max(a.diagonal().mean().item<double>(), 1e-300);
        return torch.linalg.solve(a.add(torch.eye(a.shape[0], dtype: ScalarType.Float64).MulScalar(damping), Scalars.One), rhs).MoveToOuterDisposeScope();
    }

    /// <summary>Rank that keeps fraction <paramref name="kept"/> of a group's parameters: d_in·k + n·k·d_out ≤ x·n·d_in·d_out.</summary>
    public static int RankForKeptFraction(int inFeatures, int outFeatures, int layers, double kept)
    {
        long budget = (long)Math.Floor(kept * layers * (double)inFeatures * outFeatures);
        int k = (int)(budget / (inFeatures + (long)layers * outFeatures));
        return Math.Clamp(k, 1, SharingPlan.FullRank(inFeatures, outFeatures, layers));
    }

    /// <summary>Parameters a basis group stores: the basis once plus every layer's coefficients.</summary>
    public static long BasisParameters(int inFeatures, int outFeatures, int layers, int rank) =>
        (long)inFeatures * rank + (long)layers * rank * outFeatures;
}
