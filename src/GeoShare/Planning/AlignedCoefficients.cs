using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>One layer's solution for one rank: what it costs under the block's model, and how it was constrained.</summary>
public sealed record MemberSolution(double Linear, double Quadratic, double HighCurvatureEnergy, double DeltaNorm, double TrustRadius,
    double BasisSharingDeltaNorm, double Multiplier)
{
    public double Predicted => Linear + 0.5 * Quadratic;
}

/// <summary>
/// Curvature alignment of one layer's coefficients C for a fixed shared basis B (δ = BC − W):
///
///   minimise  q(C) = ⟨g, δ⟩ + ½ [ Σⱼ γⱼ δⱼᵀ A δⱼ + Σᵢ cᵢ ⟨Vᵢ, δ⟩² ]   subject to  ‖δ‖_F ≤ Δ = (1 + τ) ‖δ_BS‖_F,
///
/// with the block's <see cref="BlockCurvatureModel"/> (g, A, γ, cᵢ, Vᵢ) and δ_BS Basis Sharing's perturbation
/// (C = (BᵀAB)⁻¹BᵀAW, activation-weighted least squares). Energy in the high-curvature directions Vᵢ is
/// penalised by cᵢ; the trust region keeps δ where a quadratic model of the loss is credible. The constraint
/// enters by its multiplier ν (a term ½ν‖δ‖²), found by bisection on ‖δ(ν)‖ = Δ.
/// With BᵀB = LLᵀ, L⁻¹(BᵀAB)L⁻ᵀ = QΘQᵀ, T = QᵀL⁻¹ and C = TᵀĈ, the stationarity condition is diagonal up to
/// the k rank-one terms:  (θᵢγⱼ + ν) Ĉᵢⱼ + Σ cₛ P̂ₛ⟨P̂ₛ, Ĉ⟩ = Ŷ₀ + νŶ₁, solved exactly by Woodbury's identity;
/// the predicted loss, ‖δ‖ and the projections ⟨Vᵢ, δ⟩ are all evaluated in these coordinates, so a trial ν
/// costs O(r·out) and a rank O(r³ + (3 + k)·r²·out).
/// </summary>
public sealed class AlignedCoefficients : IDisposable
{
    private readonly BlockCurvatureModel _m;
    private readonly Tensor _btAB, _btW, _btAw, _gamma;
    private readonly Tensor? _btB;   // null where the basis is orthonormal (BᵀB = I)
    private readonly Tensor? _btGr;
    // The top directions' projections on the basis: BᵀVᵢ [rmax, out] each, or for K-FAC's Vᵢ = aᵢgᵢᵀ the factors
    // Bᵀaᵢ (columns of [rmax, k]) and gᵢ (rows of [k, out]), so that a rank's projections cost O(r² + r·out), not O(r²·out).
    private readonly Tensor[] _btV;
    private readonly Tensor? _btFa, _fg;
    private readonly double[] _vDotW;
    private readonly double _wNormSq, _gDotW, _bulkW, _gammaAbsMax;

    /// <param name="basis">[in, rmax] float64; ranks are its leading columns (borrowed).</param>
    /// <param name="weight">[in, out] float64, the layer's original matrix (borrowed).</param>
    /// <param name="a">Input second moment used for this layer instead of the model's A (one measured on the compressed model for a
    /// refit), times <paramref name="aDivisor"/>: a gram and its rows (borrowed).</param>
    /// <param name="calibrationGram">The block's own calibration gram where the caller has read it already (borrowed; a spilled gram is not read again).</param>
    /// <param name="span">The basis's <see cref="Sharing.SharedBasis.Span"/> and this layer's place in its group: the member's
    /// XᵀX·W and XᵀX·B, where the span kept them, stand for A·W and A·B when A is read from the calibration gram (a down_proj's
    /// cost: two [in]² products fewer per member).</param>
    /// <param name="orthonormal">The basis's columns are orthonormal (BᵀB = I): each rank's solve skips the Cholesky of BᵀB and
    /// its inverse (L = I), which were about half of a rank's [r, r] work.</param>
    public AlignedCoefficients(Tensor basis, Tensor weight, BlockCurvatureModel model, Tensor? a = null, Tensor? calibrationGram = null,
        Sharing.SharedBasis.Span? span = null, int member = 0, double aDivisor = 1, bool orthonormal = false)
    {
        _m = model;
        using var scope = torch.NewDisposeScope();
        // A·y (A symmetric: BᵀA = (AB)ᵀ), never A itself where it is read from the calibration gram.
        Tensor TimesA(Tensor y) => a is null ? model.TimesA(y, calibrationGram) : aDivisor == 1 ? a.matmul(y) : a.matmul(y).DivScalar_(aDivisor);
        long? rows = a is null ? model.CalibrationRows : null;
        _gamma = model.OutputWeights;
        using (var abs = _gamma.abs()) using (var max = abs.max()) _gammaAbsMax = max.item<double>();
        var aw = rows is long n && span?.GramTimesWeight is { } gw ? gw[member].DivScalar(n) : TimesA(weight);
        var ab = rows is long m && span?.GramTimesBasis is { } gb ? gb[member].DivScalar(m) : TimesA(basis);
        // BᵀB and BᵀAB once at the largest rank: a rank's are their leading blocks.
        _btB = orthonormal ? null : basis.t().matmul(basis).MoveToOuterDisposeScope();
        _btAB = ab.t().matmul(basis).MoveToOuterDisposeScope();
        _btW = basis.t().matmul(weight).MoveToOuterDisposeScope();
        _btAw = basis.t().matmul(aw).MoveToOuterDisposeScope();
        _btGr = model.Gradient is null ? null : basis.t().matmul(model.Gradient).MoveToOuterDisposeScope();
        int k = model.Corrections.Length;
        if (k > 0 && model.TopFactors is var (fa, fg))
        {
            // K-FAC's Vᵢ = aᵢgᵢᵀ: BᵀVᵢ = (Bᵀaᵢ)gᵢᵀ and ⟨Vᵢ, W⟩ = aᵢᵀWgᵢ, without the [k, in, out] vectors.
            _btFa = basis.t().matmul(fa.t()).MoveToOuterDisposeScope();           // [rmax, k]
            _fg = fg;                                                             // borrowed from the model
            _btV = [];
            var wg = weight.matmul(fg.t());                                       // [in, k]
            _vDotW = fa.mul(wg.t()).sum(1).data<double>().ToArray();
        }
        else
        {
            var vectors = k == 0 ? null : model.TopVectors;
            _btV = Enumerable.Range(0, k).Select(i => basis.t().matmul(vectors![i]).MoveToOuterDisposeScope()).ToArray();
            _vDotW = Enumerable.Range(0, k).Select(i => vectors![i].mul(weight).sum().item<double>()).ToArray();
        }
        _wNormSq = weight.PowScalar(2).sum().item<double>();
        _gDotW = model.Gradient is null ? 0 : model.Gradient.mul(weight).sum().item<double>();
        _bulkW = aw.mul(weight).mul(_gamma).sum().item<double>();
    }

    /// <summary>Solves for the leading <paramref name="rank"/> columns of the basis with trust factor τ.</summary>
    public MemberSolution Solve(int rank, double trust, bool useGradient = true) => Solve(rank, trust, useGradient, out _, wantCoefficients: false);

    /// <summary>The aligned coefficients [rank, out] (float64) for the leading <paramref name="rank"/> columns.</summary>
    public Tensor Coefficients(int rank, double trust, bool useGradient = true)
    {
        Solve(rank, trust, useGradient, out var c, wantCoefficients: true);
        return c!;
    }

    private MemberSolution Solve(int rank, double trust, bool useGradient, out Tensor? coefficients, bool wantCoefficients)
    {
        using var scope = torch.NewDisposeScope();
        // The setup's [r, r] and [r, out] temporaries die in inner scopes: only what the trials read stays (two workers at
        // 124M-shape widths held hundreds of MB each of dead intermediates until Solve returned).
        Tensor theta, t;
        using (var setup = torch.NewDisposeScope())
        {
            var m = _btAB.narrow(0, 0, rank).narrow(1, 0, rank);
            if (_btB is null)
            {
                var (th, q) = torch.linalg.eigh(m.add(m.t(), Scalars.One).MulScalar(0.5));
                theta = th.MoveToOuterDisposeScope();
                t = q.t().contiguous().MoveToOuterDisposeScope();
            }
            else
            {
                var l = Cholesky(_btB.narrow(0, 0, rank).narrow(1, 0, rank));
                var linv = torch.linalg.solve_triangular(l, torch.eye(rank, dtype: ScalarType.Float64), upper: false);
                var mt = linv.matmul(m).matmul(linv.t());
                var (th, q) = torch.linalg.eigh(mt.add(mt.t(), Scalars.One).MulScalar(0.5));
                theta = th.MoveToOuterDisposeScope();
                t = q.t().matmul(linv).MoveToOuterDisposeScope();
            }
        }
        Tensor Hat(Tensor x) => t.matmul(x.narrow(0, 0, rank));

        var hAw = Hat(_btAw);
        if (useGradient && _btGr is null) throw new InvalidOperationException($"{_m.Site}: the first-order term needs the gradient, which was not collected");
        var hG = _btGr is null ? null : Hat(_btGr);
        var y1h = Hat(_btW);
        // P̂ᵢ = Ĥ(BᵀVᵢ), [r, out] each. For K-FAC's Vᵢ = aᵢgᵢᵀ it is eᵢgᵢᵀ with eᵢ = T·(Bᵀaᵢ)[:r], kept as the factors
        // E [r, k] and G [k, out]: every use below is a product with them, and no [k, r, out] tensor is made (at a gate_proj
        // pair's r·out ≈ 3.4 M, each trial's Woodbury passes over [k, r·out] were about half a cost's time).
        int k = _btFa is not null ? (int)_btFa.shape[1] : _btV.Length;
        var c = _m.Corrections;
        var active = Enumerable.Range(0, k).Where(i => c[i] > 0).ToArray();
        var invC = active.Length == 0 ? null : torch.diag(torch.tensor(active.Select(i => 1.0 / c[i]).ToArray()));
        var y0h = hAw.mul(_gamma);
        if (useGradient) y0h.sub_(hG!);
        var d0 = theta.unsqueeze(1).mul(_gamma.unsqueeze(0));
        // max |θᵢγⱼ| = max |θ| · max |γ| exactly (rounding is monotonic), without two passes over [r, out].
        double d0Max;
        using (var abs = theta.abs()) using (var max = abs.max()) d0Max = max.item<double>() * _gammaAbsMax;
        double eps = 1e-12 * Math.Max(d0Max, 1e-300);
        Func<double, Tensor> SolveHat;
        Func<Tensor, double[]> Projections;   // ⟨P̂ᵢ, Ĉ⟩, [k]
        if (_btFa is not null)
        {
            var e = Hat(_btFa);                                   // [r, k]
            var g = _fg!;                                         // [k, out]
            if (k > 0)
            {
                using var weights = torch.tensor(Enumerable.Range(0, k).Select(i => c[i] * _vDotW[i]).ToArray());
                using var term = e.mul(weights.unsqueeze(0)).matmul(g);
                y0h.add_(term, Scalars.One);
            }
            Tensor? ea = null, ga = null, ee = null, gg = null;
            if (active.Length > 0)
            {
                using var index = torch.tensor(active.Select(i => (long)i).ToArray());
                ea = e.index_select(1, index);                    // [r, a]
                ga = g.index_select(0, index);                    // [a, out]
                int a = active.Length;
                ee = ea.unsqueeze(2).mul(ea.unsqueeze(1)).reshape(-1, a * a);   // [r, a²]: eₛ ⊙ eₜ
                gg = ga.unsqueeze(1).mul(ga.unsqueeze(0)).reshape(a * a, -1);   // [a², out]: gₛ ⊙ gₜ
            }
            SolveHat = nu =>
            {
                using var trial = torch.NewDisposeScope();
                var rcp = d0.AddScalar(nu + eps).reciprocal_();                     // D⁻¹ as [r, out]
                var x = nu == 0 ? y0h.mul(rcp) : y0h.add(y1h.MulScalar(nu), Scalars.One).mul_(rcp);
                if (ea is null) return x.MoveToOuterDisposeScope();
                // Woodbury with uₛ = eₛgₛᵀ: (UᵀD⁻¹U)ₛₜ = (eₛ⊙eₜ)ᵀ D⁻¹ (gₛ⊙gₜ), (UᵀD⁻¹y)ₛ = eₛᵀ x gₛ, D⁻¹U coef = D⁻¹ ⊙ (Σₛ coefₛ eₛgₛᵀ).
                int a = (int)ga!.shape[0];
                var small = ee!.mul(rcp.matmul(gg!.t())).sum([0L]).reshape(a, a).add(invC!, Scalars.One);
                var ux = ea.t().matmul(x).mul(ga).sum(1);
                var coef = torch.linalg.solve(small, ux);
                return x.sub_(ea.mul(coef.unsqueeze(0)).matmul(ga).mul_(rcp)).MoveToOuterDisposeScope();
            };
            Projections = ch =>
            {
                using var scope = torch.NewDisposeScope();
                return k == 0 ? [] : e.t().matmul(ch).mul(g).sum(1).data<double>().ToArray();
            };
        }
        else
        {
            Tensor? p = null;
            if (k > 0)
            {
                using var made = torch.NewDisposeScope();
                p = torch.stack(_btV.Select(Hat).ToArray()).MoveToOuterDisposeScope();   // [k, r, out]
            }
            for (int i = 0; i < k; i++)
            {
                using var term = p![i].MulScalar(c[i] * _vDotW[i]);
                y0h.add_(term, Scalars.One);
            }
            // U: the active rank-one directions, flattened [a, r·out] (a view of P̂ where all are active).
            var u = active.Length == 0 ? null
                : active.Length == k ? p!.reshape(k, -1)
                : p!.index_select(0, torch.tensor(active.Select(i => (long)i).ToArray())).reshape(active.Length, -1);
            // Each trial ν in its own scope: the search below makes tens of them, each with [a, r·out] temporaries that
            // would otherwise all live until Solve returns (gigabytes at 124M-shape widths with two workers).
            SolveHat = nu =>
            {
                using var trial = torch.NewDisposeScope();
                var d = d0.AddScalar(nu + eps).reshape(-1);
                var x = y0h.add(y1h.MulScalar(nu), Scalars.One).reshape(-1).div(d);
                if (u is null) return x.reshape(y0h.shape).MoveToOuterDisposeScope();
                // Woodbury: (D + U diag(c) Uᵀ)⁻¹ y = D⁻¹y − D⁻¹U (diag(1/c) + UᵀD⁻¹U)⁻¹ UᵀD⁻¹y.
                var dinvU = u.div(d);
                var small = u.matmul(dinvU.t()).add(invC!, Scalars.One);
                var coef = torch.linalg.solve(small, u.matmul(x));
                return x.sub(coef.matmul(dinvU)).reshape(y0h.shape).MoveToOuterDisposeScope();
            };
            Projections = ch =>
            {
                using var scope = torch.NewDisposeScope();
                return k == 0 ? [] : p!.mul(ch.unsqueeze(0)).sum([1L, 2L]).data<double>().ToArray();
            };
        }
        double DeltaNorm(Tensor ch)
        {
            using var trial = torch.NewDisposeScope();
            // Inner products of the flat views: no [r, out] temporaries (these ran once or more per rank and member).
            var flat = ch.reshape(-1);
            return Math.Sqrt(Math.Max(0, flat.dot(flat).item<double>() - 2 * flat.dot(y1h.reshape(-1)).item<double>() + _wNormSq));
        }
        // The kept solution replaces the previous one, which is freed now.
        Tensor Keep(Tensor previous, Tensor next)
        {
            if (!ReferenceEquals(previous, next)) previous.Dispose();
            return next;
        }

        // Trust radius from Basis Sharing's own perturbation: ΘĈ = Ĥ(BᵀAW).
        double bsNorm;
        using (var bs = torch.NewDisposeScope()) bsNorm = DeltaNorm(hAw.div(theta.unsqueeze(1).AddScalar(eps)));
        double radius = (1 + trust) * bsNorm;

        // ‖δ(ν)‖ falls as ν grows (ν → ∞ gives the unweighted least squares, ‖δ‖ ≤ ‖δ_BS‖ ≤ Δ). Find ‖δ(ν)‖ = Δ
        // to 2% (the radius is a modelling choice, not a quantity to hit to many digits) by regula falsi in log ν,
        // Illinois variant, inside a bracket that only shrinks.
        double nuUsed = 0;
        var chat = SolveHat(0);
        double n0 = DeltaNorm(chat);
        if (n0 > radius * 1.02)
        {
            double lo = Math.Max(d0Max, 1e-300) * 1e-8, hi = lo * 1e8;
            double flo = n0 - radius, fhi;
            while (true)
            {
                chat = Keep(chat, SolveHat(hi));
                fhi = DeltaNorm(chat) - radius;
                if (fhi <= 0 || hi > 1e300) break;
                lo = hi; flo = fhi; hi *= 100;
            }
            double xlo = Math.Log(lo), xhi = Math.Log(hi);
            int side = 0;
            for (int it = 0; it < 40 && fhi < -0.02 * radius; it++)
            {
                double x = xhi - fhi * (xhi - xlo) / (fhi - flo);
                if (!(x > xlo && x < xhi)) x = 0.5 * (xlo + xhi);
                var cx = SolveHat(Math.Exp(x));
                double fx = DeltaNorm(cx) - radius;
                if (fx > 0)
                {
                    cx.Dispose();
                    xlo = x; flo = fx;
                    if (side == -1) fhi *= 0.5;
                    side = -1;
                }
                else
                {
                    xhi = x; fhi = fx; chat = Keep(chat, cx);
                    if (side == 1) flo *= 0.5;
                    side = 1;
                    if (fx >= -0.02 * radius) break;
                }
            }
            nuUsed = Math.Exp(xhi);
        }
        double linear, bulk, extra = 0, energy = 0;
        using (var tail = torch.NewDisposeScope())
        {
            linear = useGradient ? chat.reshape(-1).dot(hG!.reshape(-1)).item<double>() - _gDotW : 0;
            // Σᵢⱼ γⱼ (θᵢ Ĉᵢⱼ² − 2 Ĉᵢⱼ ĥᵢⱼ) as Σᵢ θᵢ Σⱼ (γⱼĈᵢⱼ)Ĉᵢⱼ − 2 ⟨γĈ, ĥ⟩: one [r, out] temporary instead of five.
            var gc = chat.mul(_gamma);
            double cross = gc.reshape(-1).dot(hAw.reshape(-1)).item<double>();
            double rows = gc.mul_(chat).sum(1).dot(theta).item<double>();
            bulk = rows - 2 * cross + _bulkW;
        }
        var along = Projections(chat);
        for (int i = 0; i < k; i++)
        {
            double proj = along[i] - _vDotW[i];
            extra += c[i] * proj * proj;
            energy += _m.TopValues[i] * proj * proj;
        }
        coefficients = wantCoefficients ? t.t().matmul(chat).MoveToOuterDisposeScope() : null;
        return new MemberSolution(linear, Math.Max(0, bulk) + extra, energy, DeltaNorm(chat), radius, bsNorm, nuUsed);
    }

    private static Tensor Cholesky(Tensor r)
    {
        double scale = Math.Max(r.diagonal().mean().item<double>(), 1e-300);
        for (double jitter = 0; ; jitter = jitter == 0 ? 1e-12 * scale : jitter * 100)
        {
            try { return torch.linalg.cholesky(r.add(torch.eye(r.shape[0], dtype: ScalarType.Float64).MulScalar(jitter), Scalars.One)); }
            catch (Exception) when (jitter < scale) { }
        }
    }

    public void Dispose()
    {
        foreach (var t in new[] { _btAB, _btW, _btAw }.Concat(_btV)) t.Dispose();
        _btB?.Dispose();
        _btFa?.Dispose();
        _btGr?.Dispose();
    }
}
