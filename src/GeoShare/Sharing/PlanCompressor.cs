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

/// <summary>
/// One color's compressed matrices, float64: a shared basis [in, k] and each member's coefficients [k, out] (basis mode),
/// or one tied matrix [in, out] (tie mode); with the members' dense weights [in, out] they came from (empty where the
/// streaming walk freed them already).
/// </summary>
public sealed record CompressedGroup(ProjectionSite[] Members, Tensor[] Weights, Tensor? Basis, Tensor[] Coefficients, Tensor? Tied);

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
        var dtype = model.DType;
        var newMaps = new Dictionary<string, SharedBasisLinear>();
        var originals = new Dictionary<string, Tensor>();   // dense weights [in, out], float64, for the refit
        var report = CompressGroups(model, plan, options, s => model.GetProjection(s).WeightInOut().to_type(ScalarType.Float64), s => grams[s.Name], grams.Rows,
            (type, color, g) =>
            {
                // The members' projections are still the dense ones: this group has not been put in place yet.
                var maps = g.Members.Select(model.GetProjection).ToArray();
                var biases = maps.Select(m => m.Bias is null ? null : m.Bias.detach().clone()).ToArray();
                if (g.Basis is { } b)
                {
                    var basis = new Parameter(b.to_type(dtype).MoveToOuterDisposeScope(), requires_grad: false);
                    for (int i = 0; i < g.Members.Length; i++)
                    {
                        var layer = new SharedBasisLinear(basis, g.Coefficients[i].to_type(dtype).MoveToOuterDisposeScope(), biases[i]?.MoveToOuterDisposeScope());
                        model.SetProjection(g.Members[i], layer);
                        newMaps[g.Members[i].Name] = layer;
                        if (refit) originals[g.Members[i].Name] = g.Weights[i].detach().clone().MoveToOuterDisposeScope();
                    }
                }
                else
                {
                    var layout = maps[0].Layout;
                    var stored = (layout == WeightLayout.InOut ? g.Tied! : g.Tied!.t()).contiguous().to_type(dtype);
                    var weight = new Parameter(stored.MoveToOuterDisposeScope(), requires_grad: false);
                    for (int i = 0; i < g.Members.Length; i++)
                        model.SetProjection(g.Members[i], new DenseLinear(weight, biases[i]?.MoveToOuterDisposeScope(), layout));
                }
            }, progress);
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
    /// The group-by-group walk of both compressors (this one and <see cref="StreamingCompressor"/>): for every compressed
    /// type and color, the members' dense weights ([in, out] float64, from <paramref name="weight"/>) and grams, the shared
    /// basis and each member's coefficients (or the tied matrix); <paramref name="store"/> puts them in place (the model's
    /// projections, or the output file) inside the group's dispose scope. Returns the per-type parameter counts.
    /// </summary>
    /// <param name="ownedGrams">
    /// <paramref name="gram"/> returns a new tensor per call (read from a spill): the walk sums a group's grams in place and
    /// frees each member's as soon as it is added where nothing else needs it, and returns the allocator's cache after
    /// every group, so that a memory-limited run holds one group's working set, not the largest one's plus a cache.
    /// </param>
    public static List<TypeCompression> CompressGroups(PretrainedModel model, SharingPlan plan, CompressionOptions options, Func<ProjectionSite, Tensor> weight,
        Func<ProjectionSite, Tensor> gram, long rows, Action<string, int, CompressedGroup> store, IProgress<ProgressTick>? progress, bool ownedGrams = false)
    {
        var report = new List<TypeCompression>();
        int total = plan.Types.Values.Where(p => p.Mode != SharingMode.Dense).Sum(p => p.Colors), done = 0;
        progress?.Report(new ProgressTick("compress", 0, total, "groups"));
        using var _ = torch.no_grad();
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
                using (var scope = torch.NewDisposeScope())
                {
                    var members = groups[c].Select(l => sites[l]).ToArray();
                    var weights = members.Select(weight).ToArray();
                    // Each member's gram is needed beside the sum by a coefficient solver and by the weighted tie.
                    bool memberGrams = options.Coefficients is not null || (tp.Mode == SharingMode.Tie && options.WeightedTie);
                    // A group narrower than its input (down_proj) sums Σᵢ XᵢᵀXᵢ·W, not the grams: they are read here only
                    // where each member's is needed, and otherwise one at a time by the basis.
                    bool narrow = tp.Mode == SharingMode.Basis && SharedBasis.NarrowerThanInput(din, dout, members.Length);
                    var grams = new Tensor[members.Length];
                    Tensor? sum = null;
                    for (int i = 0; i < members.Length && (!narrow || memberGrams); i++)
                    {
                        var gi = gram(members[i]);
                        grams[i] = gi;
                        if (narrow) continue;
                        if (sum is null) sum = gi;
                        else if (ownedGrams && !memberGrams) { sum.add_(gi, Scalars.One); gi.Dispose(); }
                        else sum = sum.add(gi, Scalars.One);
                    }
                    if (tp.Mode == SharingMode.Basis)
                    {
                        // A spilled group's inputs are its own and, without a solver, needed by nothing after the SVD.
                        bool consume = ownedGrams && !memberGrams;
                        var g = !narrow ? SharedBasis.Compute(weights, sum!, tp.Ranks![c], consumeInputs: consume)
                            : SharedBasis.ComputeNarrow(weights, memberGrams ? grams : members.Select(gram), tp.Ranks![c], consumeInputs: consume);
                        energy.Add(g.RetainedEnergy);
                        // Every member's coefficients before any is put in place: a solver may read the dense model.
                        var coefficients = members.Select((s, i) => options.Coefficients?.Solve(s, g.Basis, weights[i], grams[i], rows) ?? g.Coefficients[i]).ToArray();
                        store(type, c, new CompressedGroup(members, consume ? [] : weights, g.Basis, coefficients, null));
                        after += SharedBasis.BasisParameters(din, dout, members.Length, tp.Ranks[c]);
                    }
                    else
                    {
                        var tied = SharedBasis.Tie(weights, options.WeightedTie ? grams : null);
                        store(type, c, new CompressedGroup(members, weights, null, [], tied));
                        after += (long)din * dout;
                    }
                }
                if (ownedGrams) NativeAllocator.ReleaseCache();
                progress?.Report(new ProgressTick("compress", ++done, total, "groups"));
            }
            report.Add(new TypeCompression(type, tp.Mode, sites.Length, groups.Count, tp.Ranks, before, after, energy.Count > 0 ? energy.ToArray() : null));
        }
        return report;
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
