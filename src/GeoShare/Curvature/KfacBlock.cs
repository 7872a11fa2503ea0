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

    private Tensor? _aVals, _aVecs, _gVals, _gVecs;

    public KfacBlock(string name, Tensor a, Tensor g, WeightLayout layout)
    {
        Name = name;
        A = a;
        G = g;
        Layout = layout;
    }

    public double Trace => A.trace().item<double>() * G.trace().item<double>();

    private void Decompose()
    {
        if (_aVals is not null) return;
        (_aVals, _aVecs) = torch.linalg.eigh(A);
        (_gVals, _gVecs) = torch.linalg.eigh(G);
    }

    /// <summary>(A ⊗ G) v for v flat in the weight's storage layout.</summary>
    public Tensor Apply(Tensor flat)
    {
        using var scope = torch.NewDisposeScope();
        var v = flat.to_type(ScalarType.Float64).reshape(WeightShape);
        var r = Layout == WeightLayout.InOut ? A.matmul(v).matmul(G) : G.matmul(v).matmul(A);
        return r.reshape(-1).to_type(flat.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>The k largest eigenvalues λ_i(A)·μ_j(G) and their eigenvectors (flat, in the weight's layout).</summary>
    public (double[] Values, Tensor Vectors) Top(int k, ScalarType dtype) => Extreme(k, dtype, largest: true);

    public (double[] Values, Tensor Vectors) Bottom(int k, ScalarType dtype) => Extreme(k, dtype, largest: false);

    private (double[] Values, Tensor Vectors) Extreme(int k, ScalarType dtype, bool largest)
    {
        Decompose();
        var la = _aVals!.data<double>().ToArray();
        var lg = _gVals!.data<double>().ToArray();
        long total = (long)la.Length * lg.Length;
        if (k < 1 || k > total) throw new ArgumentOutOfRangeException(nameof(k), $"k = {k} must be within 1..{total}");
        var pairs = new List<(double V, int I, int J)>();
        for (int i = 0; i < la.Length; i++) for (int j = 0; j < lg.Length; j++) pairs.Add((la[i] * lg[j], i, j));
        var chosen = (largest ? pairs.OrderByDescending(p => p.V) : pairs.OrderBy(p => p.V)).Take(k).ToArray();
        using var scope = torch.NewDisposeScope();
        var vecs = chosen.Select(p =>
        {
            var outer = torch.outer(_aVecs![TensorIndex.Colon, p.I], _gVecs![TensorIndex.Colon, p.J]); // [in, out]
            return (Layout == WeightLayout.InOut ? outer : outer.t()).reshape(-1);
        }).ToList();
        return (chosen.Select(p => p.V).ToArray(), torch.stack(vecs).to_type(dtype).MoveToOuterDisposeScope());
    }

    /// <summary>All eigenvalues (sorted descending); for small layers and checks.</summary>
    public double[] Spectrum()
    {
        Decompose();
        var la = _aVals!.data<double>().ToArray();
        var lg = _gVals!.data<double>().ToArray();
        return la.SelectMany(a => lg.Select(g => a * g)).OrderByDescending(x => x).ToArray();
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
            var a = layers.Select(l =>
            {
                var x = probe.Inputs[l.Layer].to_type(ScalarType.Float64).reshape(-1, l.Layer.InFeatures);
                return x.t().matmul(x).div(x.shape[0]);
            }).ToList();
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
                    g[i].add_(gi.t().matmul(gi));
                }
                progress?.Report(new ProgressTick("k-fac", ++done, factors.Count, "factors"));
            }
            var blocks = new List<KfacBlock>();
            for (int i = 0; i < layers.Count; i++)
            {
                var layout = layers[i].Layer.Layout;
                blocks.Add(new KfacBlock(layers[i].Name, a[i].MoveToOuterDisposeScope(), g[i].div(batch.Predictions).MoveToOuterDisposeScope(), layout));
            }
            return blocks;
        }
        finally
        {
            foreach (var (_, layer) in layers) layer.Probe = null;
            for (int i = 0; i < weights.Count; i++) weights[i].requires_grad = had[i];
        }
    }

    private static Parameter WeightOf(LinearMap layer) => layer switch
    {
        DenseLinear d => d.Weight,
        SharedBasisLinear s => s.Coefficients,
        _ => throw new ArgumentException($"no weight for {layer.GetType().Name}"),
    };

    /// <summary>Keeps each layer's input and (graph-attached) output alive past the layer's own dispose scope, until disposed.</summary>
    private sealed class CapturingProbe : IProjectionProbe, IDisposable
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
        _aVals?.Dispose(); _aVecs?.Dispose(); _gVals?.Dispose(); _gVecs?.Dispose();
    }
}
