using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

public enum SpectrumEnd { Largest, Smallest }

/// <summary>Eigenpairs at one end of a symmetric operator's spectrum, with their residual norms ‖Hx − λx‖.</summary>
public sealed record EigenPairs(double[] Values, Tensor Vectors, double[] Residuals, int Products, int Restarts, bool Converged);

public sealed record LanczosOptions
{
    /// <summary>Converged when ‖Hx − λx‖ ≤ Tolerance · max|λ| for every wanted pair.</summary>
    public double Tolerance { get; init; } = 1e-6;
    /// <summary>Size of the Krylov basis before a restart (at least 2k + 2; capped at the dimension).</summary>
    public int? BasisSize { get; init; }
    public int MaxProducts { get; init; } = 2000;
    public long Seed { get; init; } = 0;
    /// <summary>Start vector (e.g. the sum of approximate top eigenvectors); random when null.</summary>
    public Tensor? Start { get; init; }
    /// <summary>Ritz vectors kept at a restart (default k + (m − k)/2).</summary>
    public int? Keep { get; init; }
}

/// <summary>
/// Lanczos with full re-orthogonalisation and thick (Krylov–Schur) restarts. The projected matrix
/// T = VᵀHV is formed from the re-orthogonalisation coefficients themselves, so after a restart (V ← V·Y,
/// T ← diag(θ)) the coupling to the next Krylov vector appears in T without special bookkeeping.
/// </summary>
public static class Lanczos
{
    public static EigenPairs Extreme(Func<Tensor, Tensor> apply, long n, int k, SpectrumEnd end, ScalarType dtype, LanczosOptions? options = null)
    {
        options ??= new LanczosOptions();
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"k = {k} must be within 1..{n}");
        int m = (int)Math.Min(n, Math.Max(options.BasisSize ?? Math.Max(2 * k + 8, 24), 2 * k + 2));
        var gen = new Generator((ulong)options.Seed);
        var basis = torch.zeros(m, n, dtype: dtype);          // rows are the Krylov vectors
        var t = new double[m, m];
        int p = 0, products = 0, restarts = 0;

        Tensor f = options.Start is { } s0 ? s0.to_type(dtype).clone() : torch.randn(n, dtype: dtype, generator: gen);
        double[] theta = [];
        double[,] y = new double[0, 0];
        double[] residuals = [];
        int[] order = [];
        bool converged = false;
        void Expand()
        {
            using var scope = torch.NewDisposeScope();
            double beta = f.norm().to_type(ScalarType.Float64).item<double>();
            double scale = Math.Max(MaxAbs(t, p), 1e-300);
            if (p == 0 || beta > 1e-12 * scale)
            {
                basis[p] = f.DivScalar(beta == 0 ? 1.0 : beta);
            }
            else
            {
                // Invariant subspace found: continue from a fresh random direction.
                var r = Orthogonalize(basis.narrow(0, 0, p), torch.randn(n, dtype: dtype, generator: gen));
                basis[p] = r.div(r.norm());
            }
            var w = apply(basis[p]);
            products++;
            var vs = basis.narrow(0, 0, p + 1);
            var h1 = vs.mv(w);
            w = w.sub(vs.t().mv(h1));
            var h2 = vs.mv(w);                       // second pass: full re-orthogonalisation
            w = w.sub(vs.t().mv(h2));
            var h = h1.add(h2, Scalars.One).to_type(ScalarType.Float64).data<double>().ToArray();
            if (h.Any(x => !double.IsFinite(x))) throw new NumericalException("a Hessian-vector product produced NaN or Inf");
            for (int i = 0; i <= p; i++) { t[i, p] = h[i]; t[p, i] = h[i]; }
            f.Dispose();
            f = w.MoveToOuterDisposeScope();
            p++;
        }

        try
        {
            while (true)
            {
                // Expand the basis towards m vectors, testing convergence after every product once k Ritz pairs exist.
                while (true)
                {
                    Expand();
                    if (p < Math.Min(k + 1, m) && p < n) continue;
                    (theta, y) = SymmetricEigen(t, p);
                    order = Enumerable.Range(0, p).OrderBy(i => end == SpectrumEnd.Largest ? -theta[i] : theta[i]).ToArray();
                    double fnorm = f.norm().to_type(ScalarType.Float64).item<double>();
                    double spread = theta.Select(Math.Abs).Max();
                    residuals = order.Take(k).Select(i => fnorm * Math.Abs(y[p - 1, i])).ToArray();
                    converged = residuals.All(r => r <= options.Tolerance * Math.Max(spread, 1e-300)) || p >= n;
                    if (converged || products >= options.MaxProducts)
                    {
                        var keep = order.Take(k).ToArray();
                        var vectors = RitzVectors(basis.narrow(0, 0, p), y, keep, dtype);
                        return new EigenPairs(keep.Select(i => theta[i]).ToArray(), vectors, residuals, products, restarts, converged);
                    }
                    if (p == m) break;
                }

                // Thick restart: keep the wanted Ritz vectors (and a few more), T becomes their Ritz values.
                int q = Math.Min(p - 1, options.Keep ?? k + (m - k) / 2);
                var kept = order.Take(q).ToArray();
                using (var scope = torch.NewDisposeScope())
                {
                    var ritz = RitzVectors(basis.narrow(0, 0, p), y, kept, dtype);
                    basis.narrow(0, 0, q).copy_(ritz);
                }
                Array.Clear(t);
                for (int i = 0; i < q; i++) t[i, i] = theta[kept[i]];
                p = q;
                restarts++;
            }
        }
        finally
        {
            basis.Dispose();
            f.Dispose();
        }
    }

    /// <summary>Plain Lanczos from a given start vector for <paramref name="steps"/> steps (no restart): the tridiagonal's Ritz values and first-component weights (for quadrature).</summary>
    public static (double[] Nodes, double[] Weights, int Products) Quadrature(Func<Tensor, Tensor> apply, Tensor start, int steps)
    {
        long n = start.numel();
        int m = (int)Math.Min(steps, n);
        var dtype = start.dtype;
        var basis = torch.zeros(m, n, dtype: dtype);
        var t = new double[m, m];
        try
        {
            basis[0] = start.div(start.norm());
            int p = 0;
            for (; p < m; p++)
            {
                using var scope = torch.NewDisposeScope();
                var w = apply(basis[p]);
                var vs = basis.narrow(0, 0, p + 1);
                var h1 = vs.mv(w);
                w = w.sub(vs.t().mv(h1));
                var h2 = vs.mv(w);
                w = w.sub(vs.t().mv(h2));
                var h = h1.add(h2, Scalars.One).to_type(ScalarType.Float64).data<double>().ToArray();
                for (int i = 0; i <= p; i++) { t[i, p] = h[i]; t[p, i] = h[i]; }
                if (p + 1 < m)
                {
                    double beta = w.norm().to_type(ScalarType.Float64).item<double>();
                    if (beta <= 1e-12 * Math.Max(MaxAbs(t, p + 1), 1e-300)) { p++; break; }
                    basis[p + 1] = w.DivScalar(beta);
                }
            }
            var (theta, y) = SymmetricEigen(t, p);
            return (theta, Enumerable.Range(0, p).Select(i => y[0, i] * y[0, i]).ToArray(), p);
        }
        finally { basis.Dispose(); }
    }

    private static Tensor Orthogonalize(Tensor basis, Tensor v)
    {
        for (int pass = 0; pass < 2; pass++) v = v.sub(basis.t().mv(basis.mv(v)));
        return v;
    }

    private static Tensor RitzVectors(Tensor basis, double[,] y, int[] columns, ScalarType dtype)
    {
        int p = (int)basis.shape[0];
        var coef = new double[columns.Length * p];
        for (int c = 0; c < columns.Length; c++)
            for (int i = 0; i < p; i++) coef[c * p + i] = y[i, columns[c]];
        using var yk = torch.tensor(coef, [columns.Length, p]).to_type(dtype);
        return yk.matmul(basis);
    }

    private static double MaxAbs(double[,] t, int p)
    {
        double m = 0;
        for (int i = 0; i < p; i++) for (int j = 0; j < p; j++) m = Math.Max(m, Math.Abs(t[i, j]));
        return m;
    }

    /// <summary>Eigen-decomposition of the leading p×p block (float64).</summary>
    public static (double[] Values, double[,] Vectors) SymmetricEigen(double[,] t, int p)
    {
        var flat = new double[p * p];
        for (int i = 0; i < p; i++) for (int j = 0; j < p; j++) flat[i * p + j] = 0.5 * (t[i, j] + t[j, i]);
        using var a = torch.tensor(flat, [p, p]);
        var (vals, vecs) = torch.linalg.eigh(a);
        var values = vals.data<double>().ToArray();
        var v = vecs.contiguous().data<double>().ToArray();
        var y = new double[p, p];
        for (int i = 0; i < p; i++) for (int j = 0; j < p; j++) y[i, j] = v[i * p + j];
        vals.Dispose();
        vecs.Dispose();
        return (values, y);
    }
}
