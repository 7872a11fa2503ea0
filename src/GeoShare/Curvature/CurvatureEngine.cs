using System.Diagnostics;
using System.Text.Json.Serialization;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

public enum CurvatureMethod { Exact, Kfac }

/// <summary>How K-FAC walks the model: layer by layer (<see cref="LayerwiseKfac"/>) or on one graph of the whole model; the same factors.</summary>
public enum KfacSweep { Auto, Layers, Graph }

/// <summary>How the engine estimates each block's trace on exact curvature (K-FAC's trace is always tr A · tr G).</summary>
public enum TraceEstimator
{
    None,
    /// <summary>Rademacher probes of each block's own products (<see cref="CurvatureOptions.TraceProducts"/> per block).</summary>
    Hutchinson,
    /// <summary>Hutch++ on each block's own products.</summary>
    HutchPlusPlus,
    /// <summary>Probes over every block at once: each joint product samples every block's trace (blocks must not overlap).</summary>
    BlockHutchinson,
}

/// <summary>What the curvature engine computes per block: `geoshare analyze`'s options, and the planner's (<c>BlockCurvatureModel.EngineOptions</c>).</summary>
public sealed record CurvatureOptions
{
    public CurvatureMethod Method { get; init; } = CurvatureMethod.Exact;
    public int Top { get; init; } = 8;
    public int Bottom { get; init; }
    public TraceEstimator Trace { get; init; }
    /// <summary>Products per block (Hutchinson, Hutch++), or joint products in all (block Hutchinson).</summary>
    public int TraceProducts { get; init; } = 60;
    public bool Density { get; init; }
    public int DensityRuns { get; init; } = 2;
    public int DensitySteps { get; init; } = 60;
    /// <summary>Lanczos residual tolerance; null: what the working precision reaches (<see cref="BlockHessian.DefaultTolerance"/>).</summary>
    public double? Tolerance { get; init; }
    /// <summary>Blocks with at most this many parameters get their dense Hessian: every eigenvalue and the exact trace.</summary>
    public int DenseBelow { get; init; } = 1024;
    public int KfacSamples { get; init; } = 1;
    public long Seed { get; init; }
    /// <summary>Keep the top eigenvectors in the result (and, for K-FAC, diag G): what a second-order cost model needs.</summary>
    public bool KeepVectors { get; init; }
    /// <summary>Keep each block's gradient in the result (K-FAC: one extra backward pass for all blocks).</summary>
    public bool KeepGradient { get; init; }
    /// <summary>
    /// K-FAC with <see cref="KeepVectors"/>: keep each top eigenvector as its two factors (a ⊗ g, [k, in] and [k, out])
    /// instead of [k, parameters]; the planner multiplies them out when it uses them (the same numbers, a fraction of the memory).
    /// </summary>
    public bool FactoredVectors { get; init; }
    /// <summary>
    /// K-FAC's sweep: layer by layer (<see cref="LayerwiseKfac"/>: one layer's graph and factors resident, the same A and G),
    /// or one graph over the whole model. Auto: layer by layer where the model is a layered language model and every
    /// block is a decoder-layer projection, else the whole graph.
    /// </summary>
    public KfacSweep KfacSweep { get; init; }
}

/// <summary>Curvature of one block: what `geoshare analyze` reports per block, and what the planner's cost model is built from.</summary>
public sealed record BlockCurvature : IDisposable
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
    /// <summary>Products made for this block alone (joint trace products are shared by all blocks and not counted here).</summary>
    public int HessianVectorProducts { get; init; }
    public double GradientSeconds { get; init; }
    public double Seconds { get; init; }
    /// <summary>With <see cref="CurvatureOptions.KeepVectors"/>: the top eigenvectors, [k, parameters], float64, flat in the block's storage order.</summary>
    [JsonIgnore] public Tensor? TopVectors { get; init; }
    /// <summary>With <see cref="CurvatureOptions.KeepGradient"/>: ∂L/∂(block), [parameters], float64, flat in storage order.</summary>
    [JsonIgnore] public Tensor? Gradient { get; init; }
    /// <summary>K-FAC with <see cref="CurvatureOptions.KeepVectors"/>: the diagonal of the output factor G, [out], float64.</summary>
    [JsonIgnore] public Tensor? OutputFactorDiagonal { get; init; }
    /// <summary>K-FAC with <see cref="CurvatureOptions.FactoredVectors"/>: top eigenvector i is outer(TopInputFactors[i], TopOutputFactors[i]), [in, out].</summary>
    [JsonIgnore] public Tensor? TopInputFactors { get; init; }
    [JsonIgnore] public Tensor? TopOutputFactors { get; init; }

    public void Dispose()
    {
        TopVectors?.Dispose();
        Gradient?.Dispose();
        OutputFactorDiagonal?.Dispose();
    }
}

/// <summary>
/// The curvature engine of `analyze` and `plan`, in the manner of PyHessian's <c>hessian</c> class: per block of
/// parameters, the top (and bottom) eigenvalues, trace and spectral density of the loss Hessian on one batch, or
/// K-FAC's. Exact curvature builds one gradient graph over every requested block and runs each block's solvers on
/// products restricted to that block (<see cref="HessianOperator.ApplyBlock(int, Tensor)"/>); K-FAC's top pairs
/// come from <see cref="KfacBlock.Top"/> (subspace iteration on the factors).
/// </summary>
public static class CurvatureEngine
{
    /// <summary>
    /// Resolves block names: a parameter name, or a module name meaning its weight; "a+b" makes one block of
    /// several parameters. Unknown names fail with the closest matches. None: every shareable weight matrix.
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

    /// <summary>The curvature of each block (parameter names; several make one block), in the blocks' order.</summary>
    /// <param name="stream">The model's layers read from its checkpoint (the model is the stream's shell): K-FAC sweeps it layer by layer.</param>
    public static IReadOnlyList<BlockCurvature> Collect(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks,
        CurvatureOptions options, IProgress<ProgressTick>? progress = null, LayerStream? stream = null)
    {
        var byName = model.ParametersByName();
        foreach (var b in blocks)
        {
            long n = b.Sum(p => byName[p].numel());
            int wanted = Math.Max(options.Top, options.Bottom);
            if (wanted > n) throw new UsageException(options.Top >= options.Bottom ? "top" : "bottom", $"{wanted} eigenvalues, but block {string.Join("+", b)} has only {n} parameters");
        }
        if (stream is not null && (options.Method != CurvatureMethod.Kfac || options.KfacSweep == KfacSweep.Graph))
            throw new UsageException("curvature", "a model streamed layer by layer has K-FAC's layer-wise sweep only (exact curvature and the whole-graph sweep need the model in memory)");
        return options.Method == CurvatureMethod.Kfac
            ? Kfac(model, batch, blocks, options, progress, stream)
            : Exact(model, batch, blocks, options, progress);
    }

    private static List<BlockCurvature> Exact(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks, CurvatureOptions o, IProgress<ProgressTick>? progress)
    {
        var byName = model.ParametersByName();
        // One gradient graph over every block's parameters (each once, block by block): every product below reuses it.
        var names = blocks.SelectMany(b => b).Distinct().ToList();
        var index = names.Select((n, i) => (n, i)).ToDictionary(x => x.n, x => x.i);
        var members = blocks.Select(b => b.Select(n => index[n]).ToArray()).ToList();
        var setup = Stopwatch.StartNew();
        using var h = new HessianOperator(() => batch.Loss(model), names.Select(n => (Tensor)byName[n]).ToList());
        var sizes = members.Select(m => m.Sum(j => h.BlockSizes[j])).ToArray();

        TraceEstimate[]? joint = null;
        if (o.Trace == TraceEstimator.BlockHutchinson)
        {
            // Disjoint blocks lie one after another in the operator's vector, so each is one range of it.
            if (names.Count != blocks.Sum(b => b.Length)) throw new ArgumentException("a joint trace needs blocks that share no parameter");
            progress?.Report(new ProgressTick("curvature traces", 0, o.TraceProducts, "products"));
            int probe = 0;
            joint = TraceEstimators.BlockHutchinson(v =>
            {
                var r = h.Apply(v);
                progress?.Report(new ProgressTick("curvature traces", ++probe, o.TraceProducts, "products"));
                return r;
            }, sizes, h.DType, o.TraceProducts, o.Seed + 1000);
        }
        double graphShare = h.GradientTime.TotalSeconds / blocks.Count, setupShare = setup.Elapsed.TotalSeconds / blocks.Count;
        var pieces = h.Split(h.Gradient);

        var results = new List<BlockCurvature>();
        progress?.Report(new ProgressTick("curvature", 0, blocks.Count, "blocks"));
        for (int i = 0; i < blocks.Count; i++)
        {
            var sw = Stopwatch.StartNew();
            int productsBefore = h.Products;
            var block = members[i];
            long n = sizes[i];
            Tensor Apply(Tensor v) => h.ApplyBlock(block, v);
            Tensor gradient;
            using (var scope = torch.NewDisposeScope())
                gradient = torch.cat(block.Select(j => pieces[j].reshape(-1)).ToList()).to_type(ScalarType.Float64).MoveToOuterDisposeScope();
            double gradientNorm = gradient.norm().item<double>();
            var shape = blocks[i].Length == 1 ? byName[blocks[i][0]].shape : [n];
            BlockCurvature r;
            if (n <= o.DenseBelow)
            {
                using var scope = torch.NewDisposeScope();
                var columns = h.DenseBlock(block);
                var dense = columns.add(columns.t(), Scalars.One).MulScalar(0.5);
                double[] spectrum;
                Tensor? topVectors = null;
                if (o.KeepVectors)
                {
                    var (values, vectors) = torch.linalg.eigh(dense);
                    spectrum = values.to_type(ScalarType.Float64).data<double>().ToArray();
                    topVectors = vectors.index_select(1, Scalars.Arange(n - 1, n - 1 - o.Top, -1)).t().to_type(ScalarType.Float64).contiguous().MoveToOuterDisposeScope();
                }
                else spectrum = torch.linalg.eigvalsh(dense).to_type(ScalarType.Float64).data<double>().ToArray();
                r = new BlockCurvature
                {
                    Name = string.Join("+", blocks[i]), Shape = shape, Parameters = n, Method = "dense",
                    TopEigenvalues = spectrum.Reverse().Take(o.Top).ToArray(),
                    BottomEigenvalues = o.Bottom > 0 ? spectrum.Take(o.Bottom).ToArray() : null,
                    Trace = spectrum.Sum(), TraceStandardError = 0, TraceMethod = "exact",
                    Spectrum = spectrum, TopVectors = topVectors,
                };
            }
            else
            {
                var lanczos = new LanczosOptions { Tolerance = o.Tolerance ?? BlockHessian.DefaultTolerance(h.DType), Seed = o.Seed + i };
                var top = o.Top > 0 ? Lanczos.Extreme(Apply, n, o.Top, SpectrumEnd.Largest, h.DType, lanczos) : null;
                var bottom = o.Bottom > 0 ? Lanczos.Extreme(Apply, n, o.Bottom, SpectrumEnd.Smallest, h.DType, lanczos) : null;
                var trace = o.Trace switch
                {
                    TraceEstimator.Hutchinson => TraceEstimators.Hutchinson(Apply, n, h.DType, o.TraceProducts, o.Seed + 1000 + i),
                    TraceEstimator.HutchPlusPlus => TraceEstimators.HutchPlusPlus(Apply, n, h.DType, o.TraceProducts, o.Seed + 1000 + i),
                    TraceEstimator.BlockHutchinson => joint![i],
                    _ => null,
                };
                var density = o.Density ? SpectralDensity.Estimate(Apply, n, h.DType, o.DensityRuns, o.DensitySteps, o.Seed + 2000 + i) : null;
                Tensor? topVectors = null;
                if (top is not null && o.KeepVectors)
                {
                    topVectors = top.Vectors.to_type(ScalarType.Float64);
                    if (!ReferenceEquals(topVectors, top.Vectors)) top.Vectors.Dispose();
                }
                else top?.Vectors.Dispose();
                bottom?.Vectors.Dispose();
                r = new BlockCurvature
                {
                    Name = string.Join("+", blocks[i]), Shape = shape, Parameters = n, Method = "lanczos",
                    TopEigenvalues = top?.Values ?? [], TopResiduals = top?.Residuals,
                    BottomEigenvalues = bottom?.Values, BottomResiduals = bottom?.Residuals,
                    Converged = (top?.Converged ?? true) && (bottom?.Converged ?? true),
                    Restarts = (top?.Restarts ?? 0) + (bottom?.Restarts ?? 0),
                    Trace = trace?.Value, TraceStandardError = trace?.StandardError, TraceMethod = trace?.Method,
                    DensityGrid = density?.Grid, Density = density?.Density,
                    TopVectors = topVectors,
                };
            }
            if (!o.KeepGradient) gradient.Dispose();
            results.Add(r with
            {
                Loss = h.Loss, GradientNorm = gradientNorm, Gradient = o.KeepGradient ? gradient : null,
                HessianVectorProducts = h.Products - productsBefore, GradientSeconds = graphShare, Seconds = setupShare + sw.Elapsed.TotalSeconds,
            });
            progress?.Report(new ProgressTick("curvature", i + 1, blocks.Count, "blocks"));
        }
        return results;
    }

    private static List<BlockCurvature> Kfac(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks, CurvatureOptions o, IProgress<ProgressTick>? progress,
        LayerStream? stream)
    {
        var layers = new List<(string, LinearMap)>();
        var weights = new List<Tensor>();
        foreach (var b in blocks)
        {
            if (b.Length != 1 || !b[0].EndsWith(".weight"))
                throw new UsageException("blocks", $"K-FAC works on single projection weights, not '{string.Join("+", b)}'");
            var module = model.FindModule(b[0][..^".weight".Length]);
            if (module is not DenseLinear d) throw new UsageException("blocks", $"K-FAC: '{b[0]}' is not the weight of a linear projection");
            layers.Add((b[0], d));
            weights.Add(d.Weight);
        }
        var sw = Stopwatch.StartNew();
        var results = new BlockCurvature?[layers.Count];
        var sites = LayerwiseSites(model, batch, blocks, stream is null ? o : o with { KfacSweep = KfacSweep.Layers });
        if (sites is not null)
        {
            double loss = (stream is null ? LayerwiseKfac.For(model) : LayerwiseKfac.For(stream)).Compute((LanguageModelBatch)batch, sites, o.KfacSamples, o.Seed, o.KeepGradient,
                r => results[r.Index] = Reduce(r.Index, r.Block, r.Gradient, null, o), progress);
            if (o.KeepGradient) for (int i = 0; i < results.Length; i++) results[i] = results[i]! with { Loss = loss };
        }
        else
        {
            var (loss, gradients) = o.KeepGradient ? Gradients(model, batch, weights) : (null, null);
            var kfac = KfacBlock.Compute(model, batch, layers, o.KfacSamples, o.Seed, progress);
            for (int i = 0; i < kfac.Count; i++) results[i] = Reduce(i, kfac[i], gradients?[i], loss, o);
        }
        // The sweep's time, shared equally (the reductions are small beside it).
        double shared = sw.Elapsed.TotalSeconds / Math.Max(1, layers.Count);
        return results.Select(r => r! with { Seconds = shared }).ToList();
    }

    /// <summary>
    /// The blocks as sites of a layered language model's decoder layers, where the layer-wise sweep applies
    /// (<see cref="CurvatureOptions.KfacSweep"/>: Auto where it can, Layers requires it); null: the whole-graph K-FAC.
    /// </summary>
    private static List<LayerwiseKfac.Site>? LayerwiseSites(PretrainedModel model, LossBatch batch, IReadOnlyList<string[]> blocks, CurvatureOptions o)
    {
        if (o.KfacSweep == KfacSweep.Graph) return null;
        var byWeight = model.Sites.ToDictionary(s => s.WeightName);
        bool can = model is ILayeredModel && batch is LanguageModelBatch && blocks.All(b => byWeight.ContainsKey(b[0]));
        if (!can)
        {
            if (o.KfacSweep == KfacSweep.Layers)
                throw new UsageException("kfac_sweep", $"layers needs a layered language model ({Architectures.LayeredTypes}) and decoder-layer projections only");
            return null;
        }
        return blocks.Select(b => byWeight[b[0]]).Select(s => new LayerwiseKfac.Site(s.Layer, s.Type, s.WeightName)).ToList();
    }

    /// <summary>One block's result from its factors: top pairs (or their factors), bottom eigenvalues, trace, diag G; disposes the block.</summary>
    private static BlockCurvature Reduce(int i, KfacBlock kfac, Tensor? gradient, double? loss, CurvatureOptions o)
    {
        using var k = kfac;
        // In a scope: a view such as diag G left to the finalizer would keep all of G alive (the whole model's Gs, in the end).
        using var scope = torch.NewDisposeScope();
        bool factored = o.FactoredVectors && o.KeepVectors && o.Top > 0;
        var factors = factored ? KfacBlock.KroneckerTopFactors(k.Input, k.Output, o.Top, o.Seed + i) : ((double[] Values, Tensor A, Tensor G)?)null;
        var top = o.Top > 0 && !factored ? k.Top(o.Top, o.Seed + i) : ((double[] Values, Tensor Vectors)?)null;
        double[]? bottom = o.Bottom > 0 ? k.BottomEigenvalues(o.Bottom) : null;
        if (!o.KeepVectors) top?.Vectors.Dispose();
        factors?.A.MoveToOuterDisposeScope();
        factors?.G.MoveToOuterDisposeScope();
        if (o.KeepVectors) top?.Vectors.MoveToOuterDisposeScope();
        return new BlockCurvature
        {
            Name = k.Name, Shape = k.WeightShape, Parameters = k.WeightShape[0] * k.WeightShape[1], Method = "kfac",
            Loss = loss, GradientNorm = gradient?.norm().item<double>(),
            TopEigenvalues = factors?.Values ?? top?.Values ?? [], BottomEigenvalues = bottom,
            TopInputFactors = factors?.A, TopOutputFactors = factors?.G,
            Trace = k.Trace, TraceStandardError = 0, TraceMethod = "kfac",
            TopVectors = o.KeepVectors ? top?.Vectors : null,
            OutputFactorDiagonal = o.KeepVectors ? k.Output.Diagonal().MoveToOuterDisposeScope() : null,
            Gradient = gradient,
        };
    }

    /// <summary>∂L/∂W of every weight in one backward pass, flat in storage order, float64; and the loss.</summary>
    private static (double? Loss, List<Tensor>? Gradients) Gradients(PretrainedModel model, LossBatch batch, IReadOnlyList<Tensor> weights)
    {
        var had = weights.Select(w => w.requires_grad).ToArray();
        foreach (var w in weights) w.requires_grad = true;
        try
        {
            using var scope = torch.NewDisposeScope();
            var loss = batch.Loss(model);
            double value = loss.to_type(ScalarType.Float64).item<double>();
            if (!double.IsFinite(value)) throw new NumericalException("the loss is not finite on the calibration batch");
            var grads = torch.autograd.grad([loss], weights.ToList());
            return (value, grads.Select(g => g.detach().reshape(-1).to_type(ScalarType.Float64).MoveToOuterDisposeScope()).ToList());
        }
        finally
        {
            for (int i = 0; i < weights.Count; i++) weights[i].requires_grad = had[i];
        }
    }
}
