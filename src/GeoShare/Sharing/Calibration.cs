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
        foreach (var site in sites) probe.Watch(model.GetProjection(site), site);
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
        catch
        {
            probe.Clear();
            throw;
        }
        finally
        {
            probe.Unwatch();
        }
        probe.Complete();
        return new ActivationGrams(probe.TakeAll(), probe.Rows);
    }

    public void Dispose()
    {
        foreach (var g in _gram.Values) g.Dispose();
    }
}

/// <summary>
/// Accumulates XᵀX of each watched projection's input. Projections of one layer given the same input tensor object
/// (q, k and v read one normed hidden state; gate and up another) share one gram, computed once: the probe holds the
/// layer's inputs as objects while the layer runs, so an identity match is the same tensor, never a new one at a
/// reused address. Serves the whole-model calibration, the layer-by-layer one and the streamed refit.
/// </summary>
internal sealed class GramProbe : IProjectionProbe
{
    private readonly Dictionary<LinearMap, ProjectionSite> _sites = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<string, Tensor> _grams = [];
    private readonly Dictionary<string, string> _alias = [];           // site → the site whose gram it shares
    private readonly HashSet<string> _own = [];                        // sites that keep their own gram
    private readonly List<(Tensor Input, string Site)> _layerInputs = [];
    private int _layer = -1;
    private LinearMap? _counted;
    /// <summary>Input rows (tokens or patches) seen by one projection.</summary>
    public long Rows { get; private set; }
    /// <summary>The watched sites, in the order watched.</summary>
    public List<ProjectionSite> Sites { get; } = [];

    public void Watch(LinearMap map, ProjectionSite site)
    {
        _sites[map] = site;
        Sites.Add(site);
        map.Probe = this;
    }

    public void Unwatch()
    {
        foreach (var map in _sites.Keys) map.Probe = null;
        _layerInputs.Clear();
    }

    public void OnForward(LinearMap projection, Tensor input, Tensor output)
    {
        if (!_sites.TryGetValue(projection, out var site)) return;
        if (site.Layer != _layer)
        {
            _layerInputs.Clear();
            _layer = site.Layer;
        }
        string? earlier = null;
        foreach (var (seen, by) in _layerInputs)
            if (ReferenceEquals(seen, input)) { earlier = by; break; }
        _layerInputs.Add((input, site.Name));
        if (_alias.TryGetValue(site.Name, out var shared))
        {
            if (earlier is not null && StoredAs(earlier) == shared) return;
            throw new InvalidOperationException($"{site.Name} read another input than {shared} in a later batch");
        }
        if (earlier is not null && !_own.Contains(site.Name))
        {
            _alias[site.Name] = StoredAs(earlier);
            return;
        }
        _own.Add(site.Name);
        using var x = input.detach().reshape(-1, projection.InFeatures); // GramSum chooses the products' dtype
        _counted ??= projection;
        if (ReferenceEquals(_counted, projection)) Rows += x.shape[0];
        // The sum outlives the forward pass's scope.
        _grams[site.Name] = GramSum.Add(_grams.GetValueOrDefault(site.Name), x).DetachFromDisposeScope();
    }

    /// <summary>The site whose gram <paramref name="site"/> uses (itself unless it shares one).</summary>
    public string StoredAs(string site) => _alias.GetValueOrDefault(site, site);

    /// <summary>The gram <paramref name="site"/> uses (held by the probe).</summary>
    public Tensor Gram(string site) => _grams[StoredAs(site)];

    /// <summary>Every gram whole (<see cref="GramSum.Complete"/>), once the batches are done.</summary>
    public void Complete()
    {
        foreach (var g in _grams.Values) GramSum.Complete(g);
    }

    /// <summary>Every watched site's gram, handed to the caller: a shared one as a view (an alias) of the gram it shares.</summary>
    public Dictionary<string, Tensor> TakeAll()
    {
        var all = new Dictionary<string, Tensor>(_grams);
        foreach (var site in _sites.Values)
            if (_alias.TryGetValue(site.Name, out var shared)) all[site.Name] = _grams[shared].alias();
            else if (!all.ContainsKey(site.Name))
                all[site.Name] = torch.zeros(site.InFeatures, site.InFeatures, dtype: ScalarType.Float64); // never ran
        _grams.Clear();
        return all;
    }

    /// <summary>Unwatches every map, frees the grams it still holds and starts over.</summary>
    public void Clear()
    {
        Unwatch();
        foreach (var g in _grams.Values) g.Dispose();
        _sites.Clear();
        _grams.Clear();
        _alias.Clear();
        _own.Clear();
        Sites.Clear();
        _layer = -1;
        _counted = null;
        Rows = 0;
    }
}
