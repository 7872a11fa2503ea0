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
        var scales = torch.cat([torch.tensor(new[] { 10.0, 8, 6, 4.5, 3.5, 2.8 }), torch.full([width - 6], 0.5, dtype: ScalarType.Float64)]);
        var xs = Enumerable.Range(0, batches).Select(_ => torch.randn(rows, width, dtype: ScalarType.Float64, generator: gen).mul(scales)
            .to_type(float32 ? ScalarType.Float32 : ScalarType.Float64)).ToList();
        const long divisor = 97;
        using var m = new SecondMoment(width);
        foreach (var x in xs) m.Add(x);
        m.Complete(divisor);
        Assert.Equal(rows * batches < width, m.IsLowRank);
        var all = torch.cat(xs, 0).to_type(ScalarType.Float64);
        var dense = all.t().matmul(all).div(divisor);
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
            Assert.True(dense.matmul(v).sub(v.mul(values[i])).norm().item<double>() <= 1e-7 * reference[0], $"pair {i}: residual");
        }
    }
}
