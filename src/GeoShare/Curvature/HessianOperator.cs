using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

/// <summary>
/// Hessian-vector products of a loss with respect to a set of parameters, by double backward. The loss and
/// its gradient (with its graph) are computed once; every product reuses that graph and frees its own
/// temporaries. Vectors are flat: the parameters' elements concatenated in the given order.
/// </summary>
public sealed class HessianOperator : IDisposable
{
    private readonly List<Tensor> _params;
    private readonly List<Tensor> _grads = [];
    private readonly List<int> _differentiable = [];
    private readonly bool[] _hadGrad;

    public long Dimension { get; }
    /// <summary>Element count of each parameter, in order.</summary>
    public IReadOnlyList<long> BlockSizes { get; }
    public ScalarType DType { get; }
    public double Loss { get; }
    public double GradientNorm { get; }
    /// <summary>The gradient as a flat vector (detached).</summary>
    public Tensor Gradient { get; }
    public int Products { get; private set; }
    public TimeSpan GradientTime { get; }

    public HessianOperator(Func<Tensor> loss, IReadOnlyList<Tensor> parameters)
    {
        if (parameters.Count == 0) throw new ArgumentException("no parameters to differentiate");
        _params = parameters.ToList();
        DType = parameters[0].dtype;
        BlockSizes = parameters.Select(p => p.numel()).ToArray();
        Dimension = BlockSizes.Sum();
        _hadGrad = parameters.Select(p => p.requires_grad).ToArray();
        foreach (var p in parameters) p.requires_grad = true;

        var sw = System.Diagnostics.Stopwatch.StartNew();
        // Intermediate handles are released when this scope ends; the autograd graph holds what it needs.
        using (var scope = torch.NewDisposeScope())
        {
            var l = loss();
            Loss = l.to_type(ScalarType.Float64).item<double>();
            if (!l.requires_grad || !double.IsFinite(Loss))
            {
                RestoreRequiresGrad();
                throw !l.requires_grad
                    ? new ArgumentException("the loss does not depend on the chosen parameters")
                    : new NumericalException($"the loss is not finite ({Loss}) on the calibration batch");
            }
            var grads = torch.autograd.grad([l], _params, retain_graph: true, create_graph: true, allow_unused: true);
            var flat = new List<Tensor>();
            for (int i = 0; i < parameters.Count; i++)
            {
                var g = grads[i] is null || grads[i].IsInvalid ? torch.zeros_like(parameters[i]) : grads[i];
                _grads.Add(g.MoveToOuterDisposeScope());
                // A gradient without a graph is constant: its rows of the Hessian are zero.
                if (g.requires_grad) _differentiable.Add(i);
                flat.Add(g.detach().reshape(-1));
            }
            Gradient = torch.cat(flat).MoveToOuterDisposeScope();
        }
        GradientNorm = Gradient.to_type(ScalarType.Float64).norm().item<double>();
        GradientTime = sw.Elapsed;
    }

    /// <summary>H v for a flat vector v of length <see cref="Dimension"/>.</summary>
    public Tensor Apply(Tensor v)
    {
        if (v.numel() != Dimension) throw new ArgumentException($"vector has {v.numel()} elements, the operator {Dimension}");
        Products++;
        using var scope = torch.NewDisposeScope();
        var pieces = Split(v.to_type(DType));
        var result = _params.Select(p => (Tensor?)null).ToArray();
        if (_differentiable.Count > 0)
        {
            // autograd.grad aborts the process if an input stopped requiring grad (someone else toggled it).
            foreach (var p in _params) p.requires_grad = true;
            var outs = _differentiable.Select(i => _grads[i]).ToList();
            var vs = _differentiable.Select(i => pieces[i]).ToList();
            var hv = torch.autograd.grad(outs, _params, vs, retain_graph: true, create_graph: false, allow_unused: true);
            for (int i = 0; i < _params.Count; i++)
                if (hv[i] is not null && !hv[i].IsInvalid) result[i] = hv[i];
        }
        var flat = torch.cat(result.Select((r, i) => (r ?? torch.zeros_like(_params[i])).reshape(-1)).ToList());
        return flat.detach().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// H_bb v for the diagonal block of parameter <paramref name="index"/> (v: that parameter's elements, flat). It
    /// reuses the joint gradient graph, so one operator over many blocks serves every block's eigensolver without
    /// rebuilding the graph per block; the cost is one double backward from that parameter's gradient.
    /// </summary>
    public Tensor ApplyBlock(int index, Tensor v)
    {
        var p = _params[index];
        if (v.numel() != p.numel()) throw new ArgumentException($"vector has {v.numel()} elements, block {index} has {p.numel()}");
        Products++;
        using var scope = torch.NewDisposeScope();
        if (!_differentiable.Contains(index)) return torch.zeros(p.numel(), dtype: DType).MoveToOuterDisposeScope();
        p.requires_grad = true;
        var hv = torch.autograd.grad([_grads[index]], [p], [v.to_type(DType).view(p.shape)], retain_graph: true, create_graph: false, allow_unused: true);
        var r = hv[0] is null || hv[0].IsInvalid ? torch.zeros_like(p) : hv[0];
        return r.reshape(-1).detach().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// H_BB v for the diagonal block of several parameters (v: their elements concatenated in the given order). One
    /// parameter is <see cref="ApplyBlock(int, Tensor)"/>.
    /// </summary>
    public Tensor ApplyBlock(IReadOnlyList<int> indices, Tensor v)
    {
        if (indices.Count == 1) return ApplyBlock(indices[0], v);
        long n = indices.Sum(i => _params[i].numel());
        if (v.numel() != n) throw new ArgumentException($"vector has {v.numel()} elements, the block {n}");
        Products++;
        using var scope = torch.NewDisposeScope();
        var ps = indices.Select(i => _params[i]).ToList();
        var typed = v.to_type(DType);
        var pieces = new List<Tensor>();
        long offset = 0;
        foreach (var p in ps)
        {
            pieces.Add(typed.narrow(0, offset, p.numel()).view(p.shape));
            offset += p.numel();
        }
        var result = new Tensor?[ps.Count];
        var differentiable = Enumerable.Range(0, indices.Count).Where(j => _differentiable.Contains(indices[j])).ToList();
        if (differentiable.Count > 0)
        {
            foreach (var p in ps) p.requires_grad = true;
            var hv = torch.autograd.grad(differentiable.Select(j => _grads[indices[j]]).ToList(), ps, differentiable.Select(j => pieces[j]).ToList(),
                retain_graph: true, create_graph: false, allow_unused: true);
            for (int j = 0; j < ps.Count; j++)
                if (hv[j] is not null && !hv[j].IsInvalid) result[j] = hv[j];
        }
        var flat = torch.cat(result.Select((r, j) => (r ?? torch.zeros_like(ps[j])).reshape(-1)).ToList());
        return flat.detach().MoveToOuterDisposeScope();
    }

    /// <summary>The dense diagonal block of several parameters, column by column (one block product per column).</summary>
    public Tensor DenseBlock(IReadOnlyList<int> indices)
    {
        long n = indices.Sum(i => _params[i].numel());
        if (n > 20_000) throw new InvalidOperationException($"a dense Hessian of {n}² entries is too large");
        var h = torch.zeros(n, n, dtype: DType);
        for (long j = 0; j < n; j++)
        {
            using var scope = torch.NewDisposeScope();
            var e = torch.zeros(n, dtype: DType);
            e[j] = 1.0;
            h[TensorIndex.Colon, j] = ApplyBlock(indices, e);
        }
        return h;
    }


    /// <summary>Splits a flat vector into views shaped like the parameters.</summary>
    public List<Tensor> Split(Tensor flat)
    {
        var list = new List<Tensor>();
        long offset = 0;
        foreach (var p in _params)
        {
            list.Add(flat.narrow(0, offset, p.numel()).view(p.shape));
            offset += p.numel();
        }
        return list;
    }

    /// <summary>The whole Hessian, column by column (one product per column), for small blocks and checks.</summary>
    public Tensor Dense()
    {
        if (Dimension > 20_000) throw new InvalidOperationException($"a dense Hessian of {Dimension}² entries is too large");
        var h = torch.zeros(Dimension, Dimension, dtype: DType);
        for (long j = 0; j < Dimension; j++)
        {
            using var scope = torch.NewDisposeScope();
            var e = torch.zeros(Dimension, dtype: DType);
            e[j] = 1.0;
            h[TensorIndex.Colon, j] = Apply(e);
        }
        return h;
    }

    public void Dispose()
    {
        foreach (var g in _grads) g.Dispose();
        _grads.Clear();
        Gradient.Dispose();
        RestoreRequiresGrad();
    }

    private void RestoreRequiresGrad()
    {
        for (int i = 0; i < _params.Count; i++) _params[i].requires_grad = _hadGrad[i];
    }
}
