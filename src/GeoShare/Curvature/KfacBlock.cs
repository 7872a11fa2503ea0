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
    /// <summary>A, the input factor (kept as rows where fewer rows than inputs were summed).</summary>
    public SecondMoment Input { get; }
    /// <summary>G, the output factor (kept as rows where fewer rows than outputs were summed).</summary>
    public SecondMoment Output { get; }
    /// <summary>[in, in], float64 (made on first use where the factor is kept as rows).</summary>
    public Tensor A => Input.Dense;
    /// <summary>[out, out], float64 (made on first use where the factor is kept as rows).</summary>
    public Tensor G => Output.Dense;
    public WeightLayout Layout { get; }
    public long[] WeightShape => Layout == WeightLayout.InOut ? [Input.Width, Output.Width] : [Output.Width, Input.Width];

    private double[]? _aVals, _gVals;

    public KfacBlock(string name, SecondMoment a, SecondMoment g, WeightLayout layout)
    {
        Name = name;
        Input = a;
        Output = g;
        Layout = layout;
    }

    /// <summary>A block from dense factors (taken over).</summary>
    public KfacBlock(string name, Tensor a, Tensor g, WeightLayout layout) : this(name, SecondMoment.FromMatrix(a), SecondMoment.FromMatrix(g), layout)
    {
    }

    public double Trace => Input.Trace * Output.Trace;

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
        var (values, fa, fg) = KroneckerTopFactors(Input, Output, k, seed);
        var vectors = torch.stack(Enumerable.Range(0, values.Length).Select(i => torch.outer(fa[i], fg[i])).ToArray()); // [k, in, out]
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
        using var ma = SecondMoment.FromMatrix(a.alias());
        using var mg = SecondMoment.FromMatrix(g.alias());
        return KroneckerTopFactors(ma, mg, k, seed);
    }

    /// <summary><see cref="KroneckerTopFactors(Tensor, Tensor, int, long)"/> of two moments (a low-rank one by its rows).</summary>
    public static (double[] Values, Tensor A, Tensor G) KroneckerTopFactors(SecondMoment a, SecondMoment g, int k, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (la, va) = a.Top(Math.Min(k, (int)a.Width), seed);
        var (lg, vg) = g.Top(Math.Min(k, (int)g.Width), seed + 7919);
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
        long n = m.shape[0];
        if (n <= 256)
        {
            using var scope = torch.NewDisposeScope();
            var (vals, vecs) = torch.linalg.eigh(m);
            var idx = Scalars.Arange(n - 1, n - 1 - k, -1);
            return (vals.index_select(0, idx).data<double>().ToArray(), vecs.index_select(1, idx).MoveToOuterDisposeScope());
        }
        return SymmetricTop(m.matmul, n, k, seed, iterations);
    }

    /// <summary>
    /// <see cref="SymmetricTop(Tensor, int, long, int)"/>'s subspace iteration on an operator y ↦ My ([n, p] → [n, p]): a
    /// second moment kept as its rows applies Rᵀ(Ry) / rows without M.
    /// </summary>
    public static (double[] Values, Tensor Vectors) SymmetricTop(Func<Tensor, Tensor> apply, long n, int k, long seed, int iterations = 60)
    {
        using var scope = torch.NewDisposeScope();
        int p = (int)Math.Min(n, k + 8);
        var x = torch.randn(n, p, dtype: ScalarType.Float64, generator: new Generator((ulong)seed));
        var y = apply(x);
        var order = Scalars.Arange(p - 1, p - 1 - k, -1);
        for (int it = 0; it < iterations; it++)
        {
            x = torch.linalg.qr(y).Q;
            y = apply(x);
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
            var a = new List<SecondMoment>();
            var g = new List<SecondMoment>();
            try
            {
                foreach (var l in layers)
                {
                    a.Add(SecondMoment.Of(probe.Inputs[l.Layer], l.Layer.InFeatures));
                    g.Add(new SecondMoment(l.Layer.OutFeatures));
                }
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
                        g[i].Add(grads[i].reshape(-1, layers[i].Layer.OutFeatures));
                    }
                    progress?.Report(new ProgressTick("k-fac", ++done, factors.Count, "factors"));
                }
                return layers.Select((l, i) => new KfacBlock(l.Name, a[i], g[i].Complete(batch.Predictions), l.Layer.Layout)).ToList();
            }
            catch
            {
                foreach (var m in a.Concat(g)) m.Dispose();
                throw;
            }
        }
        finally
        {
            foreach (var (_, layer) in layers) layer.Probe = null;
            for (int i = 0; i < weights.Count; i++) weights[i].requires_grad = had[i];
        }
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
        Input.Dispose();
        Output.Dispose();
    }
}
