using System.Diagnostics;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

public enum CurvatureMethod { Exact, Kfac }

public sealed record CurvatureOptions
{
    public int Top { get; init; } = 8;
    public int Bottom { get; init; }
    public bool Trace { get; init; }
    public int TraceProducts { get; init; } = 60;
    public bool HutchPlusPlus { get; init; }
    public bool Density { get; init; }
    public int DensityRuns { get; init; } = 2;
    public int DensitySteps { get; init; } = 60;
    public CurvatureMethod Method { get; init; } = CurvatureMethod.Exact;
    public double? Tolerance { get; init; }
    /// <summary>Blocks with at most this many parameters get their dense Hessian: every eigenvalue and the exact trace.</summary>
    public int DenseBelow { get; init; } = 1024;
    public int KfacSamples { get; init; } = 1;
    public long Seed { get; init; }
    /// <summary>Keep the top eigenvectors in the result (for sharing costs).</summary>
    public bool KeepVectors { get; init; }
}

/// <summary>Curvature of one block: what `geoshare analyze` reports per block.</summary>
public sealed record BlockCurvature
{
    public required string Name { get; init; }
    public required long[] Shape { get; init; }
    public required long Parameters { get; init; }
    public required string Method { get; init; }
    public double? Loss { get; init; }
    public double? GradientNorm { get; init; }
    public required double[] TopEigenvalues { get; init; }
    public double[]? TopResiduals { get; init; }
    public double[]? BottomEigenvalues { get; init; }
    public double[]? BottomResiduals { get; init; }
    public bool Converged { get; init; } = true;
    public int Restarts { get; init; }
    public double? Trace { get; init; }
    public double? TraceStandardError { get; init; }
    public string? TraceMethod { get; init; }
    /// <summary>Every eigenvalue, ascending (dense blocks only).</summary>
    public double[]? Spectrum { get; init; }
    public double[]? DensityGrid { get; init; }
    public double[]? Density { get; init; }
    public int HessianVectorProducts { get; init; }
    public double GradientSeconds { get; init; }
    public double Seconds { get; init; }
    [System.Text.Json.Serialization.JsonIgnore] public Tensor? TopVectors { get; init; }
}

/// <summary>Runs the curvature engine over blocks of a model: what `geoshare analyze` does.</summary>
public static class CurvatureAnalysis
{
    /// <summary>
    /// Resolves block names: a parameter name, or a module name meaning its weight; "a+b" makes one block of
    /// several parameters. Unknown names fail with the closest matches.
    /// </summary>
    public static IReadOnlyList<string[]> ResolveBlocks(PretrainedModel model, IReadOnlyList<string>? requested)
    {
        var names = model.ParametersByName().Keys.ToHashSet();
        if (requested is null || requested.Count == 0)
            return model.Sites.OrderBy(s => s.Layer).ThenBy(s => model.ProjectionTypes.ToList().IndexOf(s.Type))
                .Select(s => new[] { s.WeightName }).Where(b => names.Contains(b[0])).ToList();
        return requested.Select(block => block.Split('+').Select(n =>
        {
            if (names.Contains(n)) return n;
            if (names.Contains(n + ".weight")) return n + ".weight";
            var close = EditDistance.Closest(names, n, 3);
            throw new UsageException("blocks", $"no parameter named '{n}' (closest: {string.Join(", ", close)})");
        }).ToArray()).ToList();
    }

    public static IReadOnlyList<BlockCurvature> Run(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks,
        CurvatureOptions options, IProgress<ProgressTick>? progress = null)
    {
        var byName = model.ParametersByName();
        foreach (var b in blocks)
        {
            long n = b.Sum(p => byName[p].numel());
            int wanted = Math.Max(options.Top, options.Bottom);
            if (wanted > n) throw new UsageException(options.Top >= options.Bottom ? "top" : "bottom", $"{wanted} eigenvalues, but block {string.Join("+", b)} has only {n} parameters");
        }
        return options.Method == CurvatureMethod.Kfac
            ? RunKfac(model, batch, blocks, options, progress)
            : RunExact(model, batch, blocks, options, progress);
    }

    private static List<BlockCurvature> RunExact(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks, CurvatureOptions o, IProgress<ProgressTick>? progress)
    {
        var byName = model.ParametersByName();
        var results = new List<BlockCurvature>();
        progress?.Report(new ProgressTick("curvature", 0, blocks.Count, "blocks"));
        for (int i = 0; i < blocks.Count; i++)
        {
            var sw = Stopwatch.StartNew();
            var parameters = blocks[i].Select(n => (Tensor)byName[n]).ToList();
            using var h = new BlockHessian(model, batch, parameters);
            var shape = parameters.Count == 1 ? parameters[0].shape : [h.Dimension];
            string name = string.Join("+", blocks[i]);
            BlockCurvature r;
            if (h.Dimension <= o.DenseBelow)
            {
                using var dense = h.Exact();
                using var evals = torch.linalg.eigvalsh(dense).to_type(ScalarType.Float64);
                var spectrum = evals.data<double>().ToArray();
                r = new BlockCurvature
                {
                    Name = name, Shape = shape, Parameters = h.Dimension, Method = "dense",
                    Loss = h.Operator.Loss, GradientNorm = h.Operator.GradientNorm,
                    TopEigenvalues = spectrum.Reverse().Take(o.Top).ToArray(),
                    BottomEigenvalues = o.Bottom > 0 ? spectrum.Take(o.Bottom).ToArray() : null,
                    Trace = spectrum.Sum(), TraceStandardError = 0, TraceMethod = "exact",
                    Spectrum = spectrum,
                };
            }
            else
            {
                var lanczos = new LanczosOptions { Tolerance = o.Tolerance ?? BlockHessian.DefaultTolerance(h.DType), Seed = o.Seed + i };
                var top = o.Top > 0 ? h.Eigenvalues(o.Top, SpectrumEnd.Largest, lanczos) : null;
                var bottom = o.Bottom > 0 ? h.Eigenvalues(o.Bottom, SpectrumEnd.Smallest, lanczos) : null;
                var trace = o.Trace ? h.Trace(o.TraceProducts, o.HutchPlusPlus, o.Seed + 1000 + i) : null;
                var density = o.Density ? h.Density(o.DensityRuns, o.DensitySteps, o.Seed + 2000 + i) : null;
                r = new BlockCurvature
                {
                    Name = name, Shape = shape, Parameters = h.Dimension, Method = "lanczos",
                    Loss = h.Operator.Loss, GradientNorm = h.Operator.GradientNorm,
                    TopEigenvalues = top?.Values ?? [], TopResiduals = top?.Residuals,
                    BottomEigenvalues = bottom?.Values, BottomResiduals = bottom?.Residuals,
                    Converged = (top?.Converged ?? true) && (bottom?.Converged ?? true),
                    Restarts = (top?.Restarts ?? 0) + (bottom?.Restarts ?? 0),
                    Trace = trace?.Value, TraceStandardError = trace?.StandardError, TraceMethod = trace?.Method,
                    DensityGrid = density?.Grid, Density = density?.Density,
                    TopVectors = o.KeepVectors ? top?.Vectors : null,
                };
                if (!o.KeepVectors) { top?.Vectors.Dispose(); }
                bottom?.Vectors.Dispose();
            }
            results.Add(r with { HessianVectorProducts = h.Operator.Products, GradientSeconds = h.Operator.GradientTime.TotalSeconds, Seconds = sw.Elapsed.TotalSeconds });
            progress?.Report(new ProgressTick("curvature", i + 1, blocks.Count, "blocks"));
        }
        return results;
    }

    private static List<BlockCurvature> RunKfac(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks, CurvatureOptions o, IProgress<ProgressTick>? progress)
    {
        var layers = new List<(string, LinearMap)>();
        foreach (var b in blocks)
        {
            if (b.Length != 1 || !b[0].EndsWith(".weight"))
                throw new UsageException("blocks", $"K-FAC works on single projection weights, not '{string.Join("+", b)}'");
            var module = model.FindModule(b[0][..^".weight".Length]);
            if (module is not DenseLinear d) throw new UsageException("blocks", $"K-FAC: '{b[0]}' is not the weight of a linear projection");
            layers.Add((b[0], d));
        }
        var sw = Stopwatch.StartNew();
        var kfac = KfacBlock.Compute(model, batch, layers, o.KfacSamples, o.Seed, progress);
        double shared = sw.Elapsed.TotalSeconds / Math.Max(1, kfac.Count);
        var results = new List<BlockCurvature>();
        foreach (var k in kfac)
        {
            var bs = Stopwatch.StartNew();
            var (top, vecs) = k.Top(o.Top, model.DType);
            double[]? bottom = o.Bottom > 0 ? k.Bottom(o.Bottom, model.DType).Values : null;
            results.Add(new BlockCurvature
            {
                Name = k.Name, Shape = k.WeightShape, Parameters = k.WeightShape[0] * k.WeightShape[1], Method = "kfac",
                TopEigenvalues = top, BottomEigenvalues = bottom,
                Trace = k.Trace, TraceStandardError = 0, TraceMethod = "kfac",
                TopVectors = o.KeepVectors ? vecs : null,
                Seconds = shared + bs.Elapsed.TotalSeconds,
            });
            if (!o.KeepVectors) vecs.Dispose();
            k.Dispose();
        }
        return results;
    }
}
