using GeoShare.Curvature;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>K-FAC's factors kept as their rows while fewer rows than the width were summed (<see cref="SecondMoment"/>).</summary>
public class SecondMomentTests
{
    [Theory]
    [InlineData(300, 40, 2)]   // 80 rows of width 300: kept as rows
    [InlineData(300, 120, 3)]  // 360 rows: past the width on the third batch, dense from there
    [InlineData(300, 40, 2, true)]  // float32 rows (a float32 model's gradients): kept in float32, summed in float64
    public void SecondMomentAsRowsEqualsTheDenseSum(int width, int rows, int batches, bool float32 = false)
    {
        var gen = new Generator(7);
        // Six leading directions well apart (subspace iteration converges within its 60 steps), the rest a flat bulk.
        var scales = torch.cat([torch.tensor(new[] { 10.0, 8, 6, 4.5, 3.5, 2.8 }), Scalars.Full(width - 6, 0.5, ScalarType.Float64)]);
        var xs = Enumerable.Range(0, batches).Select(_ => torch.randn(rows, width, dtype: ScalarType.Float64, generator: gen).mul(scales)
            .to_type(float32 ? ScalarType.Float32 : ScalarType.Float64)).ToList();
        const long divisor = 97;
        using var m = new SecondMoment(width);
        foreach (var x in xs) m.Add(x);
        m.Complete(divisor);
        Assert.Equal(rows * batches < width, m.IsLowRank);
        var all = torch.cat(xs, 0).to_type(ScalarType.Float64);
        var dense = all.t().matmul(all).DivScalar(divisor);
        Assert.True(TensorAssert.RelativeError(m.Dense, dense) < 1e-13, "dense");
        var y = torch.randn(width, 5, dtype: ScalarType.Float64, generator: gen);
        Assert.True(TensorAssert.RelativeError(m.Times(y), dense.matmul(y)) < 1e-13, "product");
        Assert.Equal(dense.trace().item<double>(), m.Trace, 1e-12 * dense.trace().item<double>());
        Assert.True(TensorAssert.RelativeError(m.Diagonal(), dense.diagonal()) < 1e-13, "diagonal");
        // Top eigenpairs (subspace iteration on the rows' products) against a full eigendecomposition.
        var (values, vectors) = m.Top(4, seed: 3);
        var reference = torch.linalg.eigvalsh(dense).flip(0).data<double>().Take(4).ToArray();
        for (int i = 0; i < 4; i++)
        {
            Assert.True(Math.Abs(values[i] - reference[i]) <= 1e-9 * reference[0], $"λ{i}: {values[i]:R} vs {reference[i]:R}");
            var v = vectors[TensorIndex.Colon, i];
            Assert.True(dense.matmul(v).sub(v.MulScalar(values[i])).norm().item<double>() <= 1e-7 * reference[0], $"pair {i}: residual");
        }
    }

    [Theory]
    [InlineData(300, false)]   // one product, float64 either way
    [InlineData(300, true)]
    [InlineData(2500, false)]  // three column blocks, upper triangle: float64 products from float64 rows
    [InlineData(2500, true)]   // float32 rows: float32 block products added into the float64 sum
    public void GramSumEqualsTheFloat64Product(int width, bool float32)
    {
        var gen = new Generator(11);
        var xs = Enumerable.Range(0, 3).Select(_ => torch.randn(200, width, dtype: ScalarType.Float64, generator: gen).AddScalar(0.5)).ToList();
        Tensor? sum = null;
        foreach (var x in xs) sum = GramSum.Add(sum, float32 ? x.to_type(ScalarType.Float32) : x);
        GramSum.Complete(sum!);
        // The float64 reference of what the sum was given (float32 rows rounded as the sum saw them).
        var all = torch.cat(xs.Select(x => float32 ? x.to_type(ScalarType.Float32).to_type(ScalarType.Float64) : x).ToList(), 0);
        var reference = all.t().matmul(all);
        Assert.Equal(ScalarType.Float64, sum!.dtype);
        double err = TensorAssert.RelativeError(sum, reference);
        // Float64 throughout: rounding only; float32 block products: float32's rounding of each product, not more.
        Assert.True(err < (float32 && width > GramSum.BlockWidth ? 1e-6 : 1e-13), $"relative error {err:E2}");
        if (float32 && width > GramSum.BlockWidth) Assert.True(err > 1e-12, "wide float32 rows were multiplied in float64");
        Assert.True(TensorAssert.RelativeError(sum, sum.t()) < 1e-15, "not symmetric"); // blocks mirrored; a diagonal block's product to rounding
    }
}
