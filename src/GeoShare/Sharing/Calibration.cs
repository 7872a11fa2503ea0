using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>Model inputs used to measure activations: token windows (LMs) or images (ViT).</summary>
public sealed class CalibrationSet
{
    private readonly Func<PretrainedModel, IEnumerable<Tensor>> _batches;
    public int Count { get; }
    public string Description { get; }

    private CalibrationSet(int count, string description, Func<PretrainedModel, IEnumerable<Tensor>> batches)
    {
        Count = count;
        Description = description;
        _batches = batches;
    }

    /// <summary>Input tensors in batches; each is disposed by the caller.</summary>
    public IEnumerable<Tensor> Batches(PretrainedModel model) => _batches(model);

    public static CalibrationSet FromWindows(TokenWindows data, IReadOnlyList<int> windows) =>
        new(windows.Count, $"{windows.Count} windows of {Path.GetFileName(data.Source)} (from {windows[0]}, step {(windows.Count > 1 ? windows[1] - windows[0] : 1)})",
            model => windows.Chunk(model.DefaultBatchSize(data.WindowLength)).Select(c => data.Batch(c)));

    /// <summary>
    /// Sentences of an encoder's calibration file, in batches of one token length each: no padding, so every row a
    /// projection's second moment sums is a real token's.
    /// </summary>
    public static CalibrationSet FromSentences(SentenceSet data, IReadOnlyList<int> indices) =>
        new(indices.Count, $"{indices.Count} sentences of {Path.GetFileName(data.Source)} (from {indices[0]}, step {(indices.Count > 1 ? indices[1] - indices[0] : 1)})",
            model => data.SameLengthBatches(indices, 32).Select(c => data.Batch(c)));

    public static CalibrationSet FromImages(ImageDataset data, ImagePreprocessor pre, IReadOnlyList<int> indices) =>
        new(indices.Count, $"{indices.Count} images of {Path.GetFileName(data.Source)} (from {indices[0]}, step {(indices.Count > 1 ? indices[1] - indices[0] : 1)})",
            model => indices.Chunk(50).Select(c => data.Batch(c, pre, model.DType).Pixels));
}

/// <summary>
/// Second moments of each projection's inputs over a calibration set, XᵀX (float64): Basis Sharing's
/// whitening matrix, K-FAC's A factor, and the weights of the least-squares refit.
/// </summary>
public sealed class ActivationGrams : IGramSource, IDisposable
{
    private readonly Dictionary<string, Tensor> _gram;
    public long Rows { get; }

    private ActivationGrams(Dictionary<string, Tensor> gram, long rows)
    {
        _gram = gram;
        Rows = rows;
    }

    /// <summary>Grams collected elsewhere (the layer-wise path); this object owns and disposes them.</summary>
    internal static ActivationGrams Of(Dictionary<string, Tensor> grams, long rows) => new(grams, rows);

    /// <summary>XᵀX of the inputs of the projection named <paramref name="site"/>.</summary>
    public Tensor this[string site] => _gram[site];

    public bool Contains(string site) => _gram.ContainsKey(site);

    /// <summary>A view of the held gram (disposing it leaves the gram).</summary>
    public Tensor Gram(string site) => _gram[site].alias();

    public static ActivationGrams Collect(PretrainedModel model, CalibrationSet calibration, IEnumerable<ProjectionSite> sites,
        IProgress<ProgressTick>? progress = null)
    {
        var probe = new GramProbe();
        var names = new Dictionary<LinearMap, string>(ReferenceEqualityComparer.Instance);
        foreach (var site in sites)
        {
            var map = model.GetProjection(site);
            names[map] = site.Name;
            probe.Grams[map] = torch.zeros(map.InFeatures, map.InFeatures, dtype: ScalarType.Float64);
            map.Probe = probe;
        }
        int done = 0;
        try
        {
            using var _ = torch.no_grad();
            progress?.Report(new ProgressTick("calibrate", 0, calibration.Count, "inputs"));
            foreach (var batch in calibration.Batches(model))
            {
                done += (int)batch.shape[0];
                using (batch)
                using (var scope = torch.NewDisposeScope())
                    model.call(batch);
                progress?.Report(new ProgressTick("calibrate", done, calibration.Count, "inputs"));
            }
        }
        finally
        {
            foreach (var map in names.Keys) map.Probe = null;
        }
        foreach (var g in probe.Grams.Values) GramSum.Complete(g);
        return new ActivationGrams(names.ToDictionary(kv => kv.Value, kv => probe.Grams[kv.Key]), probe.Rows);
    }

    /// <summary>Accumulates XᵀX of each watched projection's input.</summary>
    private sealed class GramProbe : IProjectionProbe
    {
        private LinearMap? _counted;
        public Dictionary<LinearMap, Tensor> Grams { get; } = new(ReferenceEqualityComparer.Instance);
        /// <summary>Input rows (tokens or patches) seen by one projection.</summary>
        public long Rows { get; private set; }

        public void OnForward(LinearMap projection, Tensor input, Tensor output)
        {
            if (!Grams.TryGetValue(projection, out var g)) return;
            using var x = input.detach().reshape(-1, projection.InFeatures).to_type(ScalarType.Float64);
            _counted ??= projection;
            if (ReferenceEquals(_counted, projection)) Rows += x.shape[0];
            GramSum.Add(g, x); // into g, in place
        }
    }

    public void Dispose()
    {
        foreach (var g in _gram.Values) g.Dispose();
    }
}
