using GeoShare.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>Parameters of one matrix type before and after compression (weights only; biases are counted in the model totals).</summary>
public sealed record TypeCompression(string Type, SharingMode Mode, int Layers, int Colors, int[]? Ranks,
    long ParametersBefore, long ParametersAfter, double[]? RetainedEnergy);

public sealed record CompressionReport(
    IReadOnlyList<TypeCompression> Types, long MatrixParametersBefore, long MatrixParametersAfter,
    long ModelParametersBefore, long ModelParametersAfter, long ModelBytesAfter, bool Refitted)
{
    /// <summary>Fraction of the shareable matrices' parameters removed.</summary>
    public double Ratio => 1 - (double)MatrixParametersAfter / MatrixParametersBefore;
}

/// <summary>Coefficients for a fixed basis, as the compressor asks for them (initially and in the refit).</summary>
public interface ICoefficientSolver
{
    /// <param name="basis">[in, k] float64</param>
    /// <param name="weight">[in, out] float64, the original matrix</param>
    /// <param name="gram">XᵀX of this layer's inputs over <paramref name="rows"/> rows</param>
    Tensor Solve(ProjectionSite site, Tensor basis, Tensor weight, Tensor gram, long rows);
}

/// <summary>How a plan is applied; the defaults are the command line's.</summary>
public sealed record CompressionOptions
{
    /// <summary>Basis Sharing refits its coefficients from this ratio on (the default <see cref="Refit"/>).</summary>
    public const double AutoRefitRatio = 0.4;

    /// <summary>
    /// Re-solve coefficients by least squares on inputs from the already-compressed model (needs the calibration set).
    /// Null: from a plan ratio of <see cref="AutoRefitRatio"/>, as Basis Sharing does.
    /// </summary>
    public bool? Refit { get; init; }
    /// <summary>Tie mode: weight the mean by each layer's input second moments.</summary>
    public bool WeightedTie { get; init; } = true;
    /// <summary>Coefficients for a fixed basis (Geo-Sharing's curvature alignment); null: Basis Sharing's (the SVD's, refit by least squares).</summary>
    public ICoefficientSolver? Coefficients { get; init; }
}

/// <summary>Turns a dense model into a compressed one by a <see cref="SharingPlan"/>, in place.</summary>
public static class PlanCompressor
{
    public static CompressionReport Apply(PretrainedModel model, SharingPlan plan, ActivationGrams grams, CompressionOptions options,
        CalibrationSet? calibration = null, IProgress<ProgressTick>? progress = null)
    {
        plan.Validate(model, "plan");
        bool refit = (options.Refit ?? (plan.Ratio ?? 0) >= CompressionOptions.AutoRefitRatio) && calibration is not null;
        long modelBefore = model.ParameterCount();
        var report = new List<TypeCompression>();
        var dtype = model.DType;
        var newMaps = new Dictionary<string, SharedBasisLinear>();
        var originals = new Dictionary<string, Tensor>();   // dense weights [in, out], float64, for the refit
        int total = plan.Types.Values.Where(p => p.Mode != SharingMode.Dense).Sum(p => p.Colors), done = 0;
        progress?.Report(new ProgressTick("compress", 0, total, "groups"));
        using (torch.no_grad())
        {
            foreach (var type in model.ProjectionTypes)
            {
                var sites = Enumerable.Range(0, model.Config.NumLayers).Select(l => model.Site(type, l)).ToArray();
                int din = sites[0].InFeatures, dout = sites[0].OutFeatures;
                long before = (long)sites.Length * din * dout;
                if (!plan.Types.TryGetValue(type, out var tp) || tp.Mode == SharingMode.Dense)
                {
                    report.Add(new TypeCompression(type, SharingMode.Dense, sites.Length, sites.Length, null, before, before, null));
                    continue;
                }
                var groups = tp.Groups();
                long after = 0;
                var energy = new List<double>();
                for (int c = 0; c < groups.Count; c++)
                {
                    using var scope = torch.NewDisposeScope();
                    var members = groups[c].Select(l => sites[l]).ToArray();
                    var maps = members.Select(s => model.GetProjection(s)).ToArray();
                    var weights = maps.Select(m => m.WeightInOut().to_type(ScalarType.Float64)).ToArray();
                    var biases = maps.Select(m => m.Bias is null ? null : m.Bias.detach().clone()).ToArray();
                    if (tp.Mode == SharingMode.Basis)
                    {
                        var gram = members.Select(s => grams[s.Name]).Aggregate((a, b) => a.add(b, Scalars.One));
                        var g = SharedBasis.Compute(weights, gram, tp.Ranks![c]);
                        energy.Add(g.RetainedEnergy);
                        var basis = new Parameter(g.Basis.to_type(dtype).MoveToOuterDisposeScope(), requires_grad: false);
                        for (int i = 0; i < members.Length; i++)
                        {
                            var coefficients = options.Coefficients?.Solve(members[i], g.Basis, weights[i], grams[members[i].Name], grams.Rows) ?? g.Coefficients[i];
                            var layer = new SharedBasisLinear(basis, coefficients.to_type(dtype).MoveToOuterDisposeScope(), biases[i]?.MoveToOuterDisposeScope());
                            model.SetProjection(members[i], layer);
                            newMaps[members[i].Name] = layer;
                            if (refit) originals[members[i].Name] = weights[i].detach().clone().MoveToOuterDisposeScope();
                        }
                        after += SharedBasis.BasisParameters(din, dout, members.Length, tp.Ranks[c]);
                    }
                    else
                    {
                        var tied = SharedBasis.Tie(weights, options.WeightedTie ? members.Select(s => grams[s.Name]).ToArray() : null);
                        var layout = maps[0].Layout;
                        var stored = (layout == WeightLayout.InOut ? tied : tied.t()).contiguous().to_type(dtype);
                        var weight = new Parameter(stored.MoveToOuterDisposeScope(), requires_grad: false);
                        for (int i = 0; i < members.Length; i++)
                            model.SetProjection(members[i], new DenseLinear(weight, biases[i]?.MoveToOuterDisposeScope(), layout));
                        after += (long)din * dout;
                    }
                    progress?.Report(new ProgressTick("compress", ++done, total, "groups"));
                }
                report.Add(new TypeCompression(type, tp.Mode, sites.Length, groups.Count, tp.Ranks, before, after, energy.Count > 0 ? energy.ToArray() : null));
            }
        }
        bool refitted = false;
        if (refit && newMaps.Count > 0 && calibration is not null)
        {
            RefitCoefficients(model, newMaps, originals, calibration, options.Coefficients, progress);
            refitted = true;
        }
        return new CompressionReport(report, report.Sum(r => r.ParametersBefore), report.Sum(r => r.ParametersAfter),
            modelBefore, model.ParameterCount(), model.ParameterBytes(), refitted);
    }

    /// <summary>
    /// Layer by layer, from the first: measure this layer's inputs in the model as compressed so far and
    /// re-solve its coefficients for the original weights (the basis stays fixed).
    /// </summary>
    private static void RefitCoefficients(PretrainedModel model, Dictionary<string, SharedBasisLinear> maps, Dictionary<string, Tensor> originals,
        CalibrationSet calibration, ICoefficientSolver? solver, IProgress<ProgressTick>? progress)
    {
        int layers = model.Config.NumLayers;
        for (int l = 0; l < layers; l++)
        {
            var sites = model.Sites.Where(s => s.Layer == l && maps.ContainsKey(s.Name)).ToList();
            if (sites.Count == 0) continue;
            using var grams = ActivationGrams.Collect(model, calibration, sites);
            using (torch.no_grad())
                foreach (var s in sites)
                {
                    var m = maps[s.Name];
                    using var basis = m.Basis.to_type(ScalarType.Float64);
                    using var c = solver?.Solve(s, basis, originals[s.Name], grams[s.Name], grams.Rows) ?? SharedBasis.Refit(basis, originals[s.Name], grams[s.Name]);
                    m.Coefficients.copy_(c.to_type(m.Coefficients.dtype));
                }
            progress?.Report(new ProgressTick("refit", l + 1, layers, "layers"));
        }
        foreach (var o in originals.Values) o.Dispose();
    }
}
