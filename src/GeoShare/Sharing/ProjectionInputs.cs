using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>
/// Calibration second moments XᵀX (float64) by site, read one at a time: held in memory (<see cref="ActivationGrams"/>) or
/// on disk (<see cref="SpilledGrams"/>), so that the planner and the compressors need not hold every layer's.
/// </summary>
public interface IGramSource
{
    /// <summary>Input rows (tokens, patches) each gram sums over.</summary>
    long Rows { get; }

    bool Contains(string site);

    /// <summary>XᵀX of the inputs of <paramref name="site"/>, a tensor the caller disposes (a view of a resident gram, or read from disk).</summary>
    Tensor Gram(string site);
}

/// <summary>
/// Each projection's dense weight as [in, out] float64, a new tensor per read, from the resident model or from its
/// checkpoint (a layer-wise run, whose model is a shell without layer weights).
/// </summary>
public sealed class ProjectionWeights
{
    private readonly Func<ProjectionSite, Tensor> _read;
    private readonly object? _lock;

    private ProjectionWeights(Func<ProjectionSite, Tensor> read, bool serial)
    {
        _read = read;
        _lock = serial ? new object() : null;
    }

    /// <summary>From the model's own (dense) projections.</summary>
    public static ProjectionWeights Resident(PretrainedModel model) => new(site =>
    {
        using (torch.no_grad()) return model.GetProjection(site).WeightInOut().to_type(ScalarType.Float64).detach().clone();
    }, serial: false);

    /// <summary>Read from the streamed model's checkpoint (shape and finiteness checked), in the shell's storage layout.</summary>
    public static ProjectionWeights FromCheckpoint(LayerStream stream)
    {
        var src = new CheckpointTensorSource(Checkpoint.Open(stream.Dir), stream.Shell.DType);
        // The checkpoint reader is not safe for concurrent reads: the planner's workers take turns.
        return new(site => InOut64(src, site, stream.Shell.GetProjection(site).Layout), serial: true);
    }

    /// <summary>The weight of <paramref name="site"/> as [in, out] float64; the caller disposes it.</summary>
    public Tensor Read(ProjectionSite site)
    {
        if (_lock is null) return _read(site);
        lock (_lock) return _read(site);
    }

    /// <summary>A projection's weight as [in, out] float64 from a checkpoint; the tensor as read is freed at once (67 MB for a 1B down_proj).</summary>
    internal static Tensor InOut64(TensorSource src, ProjectionSite site, WeightLayout layout)
    {
        using var scope = torch.NewDisposeScope();
        var w = layout == WeightLayout.InOut
            ? src.Take(site.WeightName, site.InFeatures, site.OutFeatures)
            : src.Take(site.WeightName, site.OutFeatures, site.InFeatures).t();
        return w.to_type(ScalarType.Float64).MoveToOuterDisposeScope();
    }
}
