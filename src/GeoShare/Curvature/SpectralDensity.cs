using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

/// <summary>A smoothed eigenvalue density on a grid, and the quadrature nodes and weights it came from.</summary>
public sealed record SpectralDensityEstimate(double[] Grid, double[] Density, double[][] Nodes, double[][] Weights, double Sigma, int Products);

/// <summary>Stochastic Lanczos quadrature (as PyHessian's density): Ritz values weighted by squared first components, Gaussian-smoothed.</summary>
public static class SpectralDensity
{
    public static SpectralDensityEstimate Estimate(Func<Tensor, Tensor> apply, long n, ScalarType dtype, int runs, int steps, long seed, int gridPoints = 400, double relativeSigma = 0.01)
    {
        var gen = new Generator((ulong)seed);
        var nodes = new double[runs][];
        var weights = new double[runs][];
        int products = 0;
        for (int r = 0; r < runs; r++)
        {
            using var scope = torch.NewDisposeScope();
            var start = TraceEstimators.Rademacher(n, dtype, gen);
            var (nd, w, used) = Lanczos.Quadrature(apply, start, steps);
            nodes[r] = nd;
            weights[r] = w;
            products += used;
        }
        double lo = nodes.SelectMany(x => x).Min(), hi = nodes.SelectMany(x => x).Max();
        double range = Math.Max(hi - lo, Math.Max(Math.Abs(hi), 1e-12) * 1e-6);
        double sigma = relativeSigma * range;
        double gLo = lo - 5 * sigma, gHi = hi + 5 * sigma;
        var grid = Enumerable.Range(0, gridPoints).Select(i => gLo + (gHi - gLo) * i / (gridPoints - 1)).ToArray();
        var density = new double[gridPoints];
        double norm = 1.0 / (runs * sigma * Math.Sqrt(2 * Math.PI));
        for (int r = 0; r < runs; r++)
            for (int j = 0; j < nodes[r].Length; j++)
                for (int g = 0; g < gridPoints; g++)
                {
                    double d = (grid[g] - nodes[r][j]) / sigma;
                    density[g] += weights[r][j] * Math.Exp(-0.5 * d * d) * norm;
                }
        return new SpectralDensityEstimate(grid, density, nodes, weights, sigma, products);
    }
}
