using GeoShare.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Curvature;

/// <summary>
/// The Kronecker-factored Gauss-Newton block of a linear layer y = xW (+ b): GN ≈ A ⊗ G with
/// A = mean over positions of x xᵀ and G = (1/predictions) Σ g gᵀ, where g are the output-space curvature
/// factors of the loss back-propagated to y. Exact for a linear model under squared error; the cheap
/// curvature for large models. Its eigenpairs are products of those of A and G.
/// </summary>
public sealed class KfacBlock : IDisposable
{
    public string Name { get; }
    /// <summary>[in, in], float64.</summary>
    public Tensor A { get; }
    /// <summary>[out, out], float64.</summary>
    public Tensor G { get; }
    public WeightLayout Layout { get; }
    public long[] WeightShape => Layout == WeightLayout.InOut ? [A.shape[0], G.shape[0]] : [G.shape[0], A.shape[0]];

    private double[]? _aVals, _gVals;

    public KfacBlock(string name, Tensor a, Tensor g, WeightLayout layout)
    {
        Name = name;
        A = a;
        G = g;
        Layout = layout;
    }

    public double Trace => A.trace().item<double>() * G.trace().item<double>();

    /// <summary>Every eigenvalue of A and of G (full decompositions: for the bottom end, the spectrum and checks).</summary>
    private (double[] A, double[] G) FactorEigenvalues()
    {
        if (_aVals is null)
        {
            using var scope = torch.NewDisposeScope();
            _aVals = torch.linalg.eigvalsh(A).data<double>().ToArray();
            _gVals = torch.linalg.eigvalsh(G).data<double>().ToArray();
        }
        return (_aVals, _gVals!);
    }

    /// <summary>(A ⊗ G) v for v flat in the weight's storage layout.</summary>
    public Tensor Apply(Tensor flat)
    {
        using var scope = torch.NewDisposeScope();
        var v = flat.to_type(ScalarType.Float64).reshape(WeightShape);
        var r = Layout == WeightLayout.InOut ? A.matmul(v).matmul(G) : G.matmul(v).matmul(A);
        return r.reshape(-1).to_type(flat.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The k largest eigenvalues λ_i(A)·μ_j(G) and their eigenvectors, [k, in·out] float64, flat in the weight's
    /// storage layout: <see cref="KroneckerTop"/>, the routine of `analyze` and of the planner.
    /// </summary>
    public (double[] Values, Tensor Vectors) Top(int k, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (values, vectors) = KroneckerTop(A, G, k, seed); // [k, in, out]
        var flat = Layout == WeightLayout.InOut ? vectors.reshape(values.Length, -1) : vectors.transpose(1, 2).reshape(values.Length, -1);
        return (values, flat.MoveToOuterDisposeScope());
    }

    /// <summary>The k smallest eigenvalues λ_i(A)·μ_j(G), from full decompositions of the factors.</summary>
    public double[] BottomEigenvalues(int k)
    {
        var (la, lg) = FactorEigenvalues();
        long total = (long)la.Length * lg.Length;
        if (k < 1 || k > total) throw new ArgumentOutOfRangeException(nameof(k), $"k = {k} must be within 1..{total}");
        return la.SelectMany(a => lg.Select(g => a * g)).OrderBy(x => x).Take(k).ToArray();
    }

    /// <summary>All eigenvalues (sorted descending); for small layers and checks.</summary>
    public double[] Spectrum()
    {
        var (la, lg) = FactorEigenvalues();
        return la.SelectMany(a => lg.Select(g => a * g)).OrderByDescending(x => x).ToArray();
    }

    /// <summary>
    /// The k largest eigenpairs of A ⊗ G (as [k, in, out]): products of the top eigenpairs of A and of G, each found
    /// by subspace iteration (a full eigendecomposition of a 3072 × 3072 factor costs more than the whole plan).
    /// </summary>
    public static (double[] Values, Tensor Vectors) KroneckerTop(Tensor a, Tensor g, int k, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (values, fa, fg) = KroneckerTopFactors(a, g, k, seed);
        var vectors = torch.stack(Enumerable.Range(0, values.Length).Select(i => torch.outer(fa[i], fg[i])).ToArray());
        return (values, vectors.MoveToOuterDisposeScope());
    }

    /// <summary>The k largest eigenpairs of A ⊗ G as factors: eigenvector i is outer(A[i], G[i]) (A [k, in], G [k, out]).</summary>
    public static (double[] Values, Tensor A, Tensor G) KroneckerTopFactors(Tensor a, Tensor g, int k, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (la, va) = SymmetricTop(a, Math.Min(k, (int)a.shape[0]), seed);
        var (lg, vg) = SymmetricTop(g, Math.Min(k, (int)g.shape[0]), seed + 7919);
        var pairs = la.SelectMany((x, i) => lg.Select((y, j) => (V: x * y, I: i, J: j))).OrderByDescending(p => p.V).Take(k).ToArray();
        var fa = torch.stack(pairs.Select(p => va[TensorIndex.Colon, p.I]).ToArray()).contiguous();
        var fg = torch.stack(pairs.Select(p => vg[TensorIndex.Colon, p.J]).ToArray()).contiguous();
        return (pairs.Select(p => p.V).ToArray(), fa.MoveToOuterDisposeScope(), fg.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Top-k eigenpairs of a symmetric positive semi-definite matrix by subspace iteration with Rayleigh–Ritz: at most
    /// <paramref name="iterations"/> steps, ending early once every wanted pair's residual ‖Mv − θv‖ is within 1e-10 of the
    /// largest θ (checked every 5 steps; each step reads all of M, memory-bound: a 3072² factor is 75 MB a step).
    /// </summary>
    public static (double[] Values, Tensor Vectors) SymmetricTop(Tensor m, int k, long seed, int iterations = 60)
    {
        using var scope = torch.NewDisposeScope();
        long n = m.shape[0];
        int p = (int)Math.Min(n, k + 8);
        if (n <= 256)
        {
            var (vals, vecs) = torch.linalg.eigh(m);
            var idx = Scalars.Arange(n - 1, n - 1 - k, -1);
            return (vals.index_select(0, idx).data<double>().ToArray(), vecs.index_select(1, idx).MoveToOuterDisposeScope());
        }
        var x = torch.randn(n, p, dtype: ScalarType.Float64, generator: new Generator((ulong)seed));
        var y = m.matmul(x);
        var order = Scalars.Arange(p - 1, p - 1 - k, -1);
        for (int it = 0; it < iterations; it++)
        {
            x = torch.linalg.qr(y).Q;
            y = m.matmul(x);
            if ((it + 1) % 5 != 0 || it + 1 == iterations) continue;
            using var check = torch.NewDisposeScope();
            var (cv, cq) = torch.linalg.eigh(x.t().matmul(y));
            var q = cq.index_select(1, order);
            var residual = y.matmul(q).sub(x.matmul(q).mul(cv.index_select(0, order).unsqueeze(0))).norm(0, keepdim: false).max().item<double>();
            if (residual <= 1e-10 * Math.Max(cv.max().item<double>(), 1e-300)) break;
        }
        var (tv, tq) = torch.linalg.eigh(x.t().matmul(y));
        return (tv.index_select(0, order).data<double>().ToArray(), x.matmul(tq.index_select(1, order)).MoveToOuterDisposeScope());
    }

    /// <summary>K-FAC blocks of several projections of a model from one forward pass and one backward per curvature factor.</summary>
    public static IReadOnlyList<KfacBlock> Compute(Module<Tensor, Tensor> model, LossBatch batch, IReadOnlyList<(string Name, LinearMap Layer)> layers,
        int samples = 1, long seed = 0, IProgress<ProgressTick>? progress = null)
    {
        // autograd.grad aborts the process (not catchable) when nothing requires grad: refuse an empty layer list here.
        if (layers.Count == 0) throw new ArgumentException("K-FAC needs at least one layer");
        using var probe = new CapturingProbe();
        using var scope = torch.NewDisposeScope();
        var weights = layers.Select(l => WeightOf(l.Layer)).ToList();
        var had = weights.Select(w => w.requires_grad).ToArray();
        foreach (var (_, layer) in layers) layer.Probe = probe;
        foreach (var w in weights) w.requires_grad = true;
        try
        {
            var output = batch.Output(model);
            var ys = layers.Select(l => probe.Outputs[l.Layer]).ToList();
            var a = layers.Select(l => InputMoment(probe.Inputs[l.Layer], l.Layer.InFeatures)).ToList();
            var g = layers.Select(l => torch.zeros(l.Layer.OutFeatures, l.Layer.OutFeatures, dtype: ScalarType.Float64)).ToList();
            var gen = new Generator((ulong)seed);
            int done = 0;
            var factors = batch.OutputCurvatureFactors(output, gen, samples).ToList();
            foreach (var f in factors)
            {
                using var inner = torch.NewDisposeScope();
                var grads = torch.autograd.grad([output], ys, [f], retain_graph: true, create_graph: false, allow_unused: true);
                for (int i = 0; i < layers.Count; i++)
                {
                    if (grads[i] is null || grads[i].IsInvalid) continue;
                    var gi = grads[i].to_type(ScalarType.Float64).reshape(-1, layers[i].Layer.OutFeatures);
                    GramSum.Add(g[i], gi);
                }
                progress?.Report(new ProgressTick("k-fac", ++done, factors.Count, "factors"));
            }
            var blocks = new List<KfacBlock>();
            for (int i = 0; i < layers.Count; i++)
            {
                var layout = layers[i].Layer.Layout;
                GramSum.Complete(g[i]);
                blocks.Add(new KfacBlock(layers[i].Name, a[i].MoveToOuterDisposeScope(), g[i].DivScalar(batch.Predictions).MoveToOuterDisposeScope(), layout));
            }
            return blocks;
        }
        finally
        {
            foreach (var (_, layer) in layers) layer.Probe = null;
            for (int i = 0; i < weights.Count; i++) weights[i].requires_grad = had[i];
        }
    }

    /// <summary>K-FAC's A: the mean over positions of x xᵀ of a projection's input, [in, in] float64.</summary>
    internal static Tensor InputMoment(Tensor input, int inFeatures)
    {
        // The float64 copy freed here and the division in place: a 3072-wide input's A is one [in, in] tensor, not three.
        using var x = input.to_type(ScalarType.Float64).reshape(-1, inFeatures);
        var a = GramSum.Add(null, x);
        GramSum.Complete(a);
        return a.DivScalar_(x.shape[0]);
    }

    internal static Parameter WeightOf(LinearMap layer) => layer switch
    {
        DenseLinear d => d.Weight,
        SharedBasisLinear s => s.Coefficients,
        _ => throw new ArgumentException($"no weight for {layer.GetType().Name}"),
    };

    /// <summary>Keeps each layer's input and (graph-attached) output alive past the layer's own dispose scope, until disposed.</summary>
    internal sealed class CapturingProbe : IProjectionProbe, IDisposable
    {
        public Dictionary<LinearMap, Tensor> Inputs { get; } = new(ReferenceEqualityComparer.Instance);
        public Dictionary<LinearMap, Tensor> Outputs { get; } = new(ReferenceEqualityComparer.Instance);

        public void OnForward(LinearMap projection, Tensor input, Tensor output)
        {
            Inputs[projection] = input.detach().DetachFromDisposeScope();
            Outputs[projection] = output.DetachFromDisposeScope();
        }

        public void Dispose()
        {
            foreach (var t in Inputs.Values.Concat(Outputs.Values)) t.Dispose();
        }
    }

    public void Dispose()
    {
        A.Dispose();
        G.Dispose();
    }
}
