using GeoShare.Models;
using GeoShare.Sharing;

namespace GeoShare.Planning;

/// <summary>
/// What the planner reads of the dense model: its structure (the model, or a layer-wise run's shell), each projection's
/// weight, the calibration grams, and the layer stream its K-FAC sweeps where the layers are not resident. Only the
/// weights and grams of the group being costed are in memory when they come from the checkpoint and from disk.
/// </summary>
public sealed record PlanningInputs(PretrainedModel Model, ProjectionWeights Weights, IGramSource Grams, LayerStream? Stream = null)
{
    /// <summary>The whole model in memory.</summary>
    public static PlanningInputs Resident(PretrainedModel model, IGramSource grams) => new(model, ProjectionWeights.Resident(model), grams);

    /// <summary>Layer by layer: weights read from the stream's checkpoint, K-FAC swept over its layers.</summary>
    public static PlanningInputs Streamed(LayerStream stream, IGramSource grams) => new(stream.Shell, ProjectionWeights.FromCheckpoint(stream), grams, stream);
}
