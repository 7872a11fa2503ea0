using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare;

/// <summary>
/// XᵀX summed over batches: the calibration probes' one routine (the streamed grams equal the in-memory ones bit for
/// bit) and K-FAC's factors'. Inputs wider than <see cref="BlockWidth"/> are summed by column blocks, the upper
/// triangle of blocks only, and <see cref="Complete"/> mirrors it: a 3072-wide input (GPT-2 124M's mlp.c_proj) costs
/// 10 of 16 block products. Narrower ones are one product and one add, as before blocks.
/// </summary>
public static class GramSum
{
    public const int BlockWidth = 1024;

    /// <summary>
    /// Adds xᵀx (x [rows, n]) into <paramref name="sum"/> [n, n] float64, or returns it as the first sum (null). Up to
    /// <see cref="BlockWidth"/> wide the product is float64. Wider, a float64 x gives float64 block products and any other
    /// dtype float32 ones, each added into the float64 sum: the calibration's wide grams (a down_proj's) were two thirds of
    /// a 32-layer plan's calibration in float64; Basis Sharing and SVD-LLM sum the whole gram in float32.
    /// </summary>
    public static Tensor Add(Tensor? sum, Tensor x)
    {
        long n = x.shape[1];
        if (n <= BlockWidth)
        {
            // As before blocks: one product and one add (the bundled models' numbers unchanged).
            using var x64 = x.dtype == ScalarType.Float64 ? x.alias() : x.to_type(ScalarType.Float64);
            var xtx = x64.t().matmul(x64);
            if (sum is null) return xtx;
            sum.add_(xtx, Scalars.One);
            xtx.Dispose();
            return sum;
        }
        sum ??= torch.zeros(n, n, dtype: ScalarType.Float64);
        using var scope = torch.NewDisposeScope();
        var xb = x.dtype is ScalarType.Float64 or ScalarType.Float32 ? x : x.to_type(ScalarType.Float32);
        var blocks = Blocks(n);
        foreach (var (i0, bi) in blocks)
        {
            var xi = xb.narrow(1, i0, bi);
            foreach (var (j0, bj) in blocks.Where(b => b.Start >= i0))
            {
                using var product = xi.t().matmul(xb.narrow(1, j0, bj));
                using var wide = product.dtype == ScalarType.Float64 ? product.alias() : product.to_type(ScalarType.Float64);
                sum.narrow(0, i0, bi).narrow(1, j0, bj).add_(wide, Scalars.One);
            }
        }
        return sum;
    }

    /// <summary>Fills the lower triangle of blocks from the upper one (a no-op for inputs summed in one block).</summary>
    public static void Complete(Tensor sum)
    {
        long n = sum.shape[0];
        if (n <= BlockWidth) return;
        using var scope = torch.NewDisposeScope();
        var blocks = Blocks(n);
        foreach (var (i0, bi) in blocks)
            foreach (var (j0, bj) in blocks.Where(b => b.Start > i0))
                sum.narrow(0, j0, bj).narrow(1, i0, bi).copy_(sum.narrow(0, i0, bi).narrow(1, j0, bj).t());
    }

    /// <summary>Column blocks of about equal width, none wider than <see cref="BlockWidth"/>.</summary>
    private static List<(long Start, long Width)> Blocks(long n)
    {
        long count = (n + BlockWidth - 1) / BlockWidth, width = (n + count - 1) / count;
        var blocks = new List<(long, long)>();
        for (long s = 0; s < n; s += width) blocks.Add((s, Math.Min(width, n - s)));
        return blocks;
    }
}
