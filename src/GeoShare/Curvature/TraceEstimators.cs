using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

/// <summary>A trace estimate with its standard error and the number of products it used.</summary>
public sealed record TraceEstimate(double Value, double StandardError, int Products, string Method);

/// <summary>Stochastic trace estimators for an operator known only through products.</summary>
public static class TraceEstimators
{
    public static Tensor Rademacher(long n, ScalarType dtype, Generator gen) =>
        torch.randint(0, 2, [n], dtype: ScalarType.Int64, generator: gen).to_type(dtype).MulScalar_(2).SubScalar_(1);

    /// <summary>Hutchinson: tr(H) ≈ mean of zᵀHz over Rademacher z; standard error = sample sd / √probes.</summary>
    public static TraceEstimate Hutchinson(Func<Tensor, Tensor> apply, long n, ScalarType dtype, int probes, long seed)
    {
        if (probes < 2) throw new ArgumentOutOfRangeException(nameof(probes), "Hutchinson needs at least 2 probes for a standard error");
        var gen = new Generator((ulong)seed);
        var samples = new double[probes];
        for (int i = 0; i < probes; i++)
        {
            using var scope = torch.NewDisposeScope();
            var z = Rademacher(n, dtype, gen);
            samples[i] = z.dot(apply(z)).to_type(ScalarType.Float64).item<double>();
        }
        var (mean, se) = MeanAndStandardError(samples);
        return new TraceEstimate(mean, se, probes, "hutchinson");
    }

    /// <summary>
    /// Hutchinson for every diagonal block at once: with one Rademacher z over all blocks, z_bᵀ(Hz)_b = z_bᵀH_bb z_b +
    /// Σ_{b'≠b} z_bᵀH_bb' z_b', whose cross terms have mean zero, so each product gives an unbiased sample of every
    /// block's trace. A product over all blocks costs about one product of the deepest block, against one product
    /// per block for separate estimates; the cross terms add variance, which the reported standard error includes.
    /// </summary>
    public static TraceEstimate[] BlockHutchinson(Func<Tensor, Tensor> apply, IReadOnlyList<long> blockSizes, ScalarType dtype, int probes, long seed)
    {
        if (probes < 2) throw new ArgumentOutOfRangeException(nameof(probes), "Hutchinson needs at least 2 probes for a standard error");
        var gen = new Generator((ulong)seed);
        long n = blockSizes.Sum();
        var samples = new double[blockSizes.Count][];
        for (int b = 0; b < blockSizes.Count; b++) samples[b] = new double[probes];
        for (int i = 0; i < probes; i++)
        {
            using var scope = torch.NewDisposeScope();
            var z = Rademacher(n, dtype, gen);
            var zhz = z.mul(apply(z)).to_type(ScalarType.Float64);
            long offset = 0;
            for (int b = 0; b < blockSizes.Count; b++)
            {
                samples[b][i] = zhz.narrow(0, offset, blockSizes[b]).sum().item<double>();
                offset += blockSizes[b];
            }
        }
        return samples.Select(x =>
        {
            var (mean, se) = MeanAndStandardError(x);
            return new TraceEstimate(mean, se, probes, "block-hutchinson");
        }).ToArray();
    }

    /// <summary>
    /// Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace on a sketched top subspace exactly, Hutchinson on
    /// the deflated rest. Uses <paramref name="products"/> products in thirds.
    /// </summary>
    public static TraceEstimate HutchPlusPlus(Func<Tensor, Tensor> apply, long n, ScalarType dtype, int products, long seed)
    {
        if (products < 6) throw new ArgumentOutOfRangeException(nameof(products), "Hutch++ needs at least 6 products");
        var gen = new Generator((ulong)seed);
        int s = (int)Math.Min(products / 3, n);
        int g = products - 2 * s;
        using var scope = torch.NewDisposeScope();
        var sketch = torch.stack(Enumerable.Range(0, s).Select(_ => apply(Rademacher(n, dtype, gen))).ToList(), 1); // [n, s]
        var (q, _) = torch.linalg.qr(sketch);
        double top = 0;
        for (int j = 0; j < q.shape[1]; j++) top += q[TensorIndex.Colon, j].dot(apply(q[TensorIndex.Colon, j].contiguous())).to_type(ScalarType.Float64).item<double>();
        var samples = new double[g];
        for (int i = 0; i < g; i++)
        {
            using var inner = torch.NewDisposeScope();
            var z = Rademacher(n, dtype, gen);
            z = z.sub(q.mv(q.t().mv(z)));
            samples[i] = z.dot(apply(z)).to_type(ScalarType.Float64).item<double>();
        }
        var (mean, se) = MeanAndStandardError(samples);
        return new TraceEstimate(top + mean, se, 2 * s + g, "hutch++");
    }

    public static (double Mean, double StandardError) MeanAndStandardError(IReadOnlyList<double> x)
    {
        double mean = x.Average();
        if (x.Count < 2) return (mean, double.NaN);
        double var = x.Sum(v => (v - mean) * (v - mean)) / (x.Count - 1);
        return (mean, Math.Sqrt(var / x.Count));
    }
}
