using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Curvature;

/// <summary>
/// The loss Hessian restricted to one block of parameters on one batch, in the manner of PyHessian's
/// <c>hessian</c> class: <see cref="Eigenvalues"/>, <see cref="Trace"/>, <see cref="Density"/>, and
/// <see cref="Exact"/> for small blocks. The gradient graph is built once and reused by every product. For many
/// blocks on one graph (what `analyze` and the planner do), <see cref="CurvatureEngine"/>.
/// </summary>
public sealed class BlockHessian : IDisposable
{
    public HessianOperator Operator { get; }
    public long Dimension => Operator.Dimension;
    public ScalarType DType => Operator.DType;

    public BlockHessian(Module<Tensor, Tensor> model, LossBatch batch, IReadOnlyList<Tensor> parameters) =>
        Operator = new HessianOperator(() => batch.Loss(model), parameters);

    /// <summary>The block of a model's named parameters (Hugging Face names).</summary>
    public static BlockHessian For(PretrainedModel model, LossBatch batch, IReadOnlyList<string> parameterNames)
    {
        var all = model.ParametersByName();
        return new BlockHessian(model, batch, parameterNames.Select(n => (Tensor)all[n]).ToList());
    }

    public EigenPairs Eigenvalues(int k = 1, SpectrumEnd end = SpectrumEnd.Largest, LanczosOptions? options = null) =>
        Lanczos.Extreme(Operator.Apply, Dimension, k, end, DType, options ?? new LanczosOptions { Tolerance = DefaultTolerance(DType) });

    public TraceEstimate Trace(int products = 50, bool hutchPlusPlus = false, long seed = 0) => hutchPlusPlus
        ? TraceEstimators.HutchPlusPlus(Operator.Apply, Dimension, DType, products, seed)
        : TraceEstimators.Hutchinson(Operator.Apply, Dimension, DType, products, seed);

    public SpectralDensityEstimate Density(int runs = 1, int steps = 80, long seed = 0) =>
        SpectralDensity.Estimate(Operator.Apply, Dimension, DType, runs, steps, seed);

    /// <summary>The dense Hessian, one product per column, symmetrised.</summary>
    public Tensor Exact()
    {
        using var h = Operator.Dense();
        return h.add(h.t(), Scalars.One).MulScalar(0.5);
    }

    /// <summary>Residual tolerance reachable in the working precision.</summary>
    public static double DefaultTolerance(ScalarType dtype) => dtype == ScalarType.Float64 ? 1e-10 : 1e-3;

    public void Dispose() => Operator.Dispose();
}
