using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

/// <summary>
/// K-FAC factors of a layered language model computed one layer at a time: the forward keeps only each layer's input
/// (the boundary hidden state); the head's output curvature factors are back-propagated to the last boundary; then,
/// from the top layer down, each layer's forward is recomputed from its boundary, its projections' A and G are taken
/// from that small graph, and the factors' gradients at its input become the next layer's. The same A and G as
/// <see cref="KfacBlock.Compute"/> on the whole graph (the chain rule split at the boundaries), with one layer's
/// activations and one layer's factors resident instead of the whole model's; with <see cref="LayerStream"/>'s loader
/// only one layer's weights are resident too.
/// </summary>
public sealed class LayerwiseKfac
{
    private readonly ILayeredModel _parts;
    private readonly int _layers;
    private readonly Func<int, DecoderLayer> _load;
    private readonly Action<DecoderLayer>? _release;

    /// <param name="load">Layer i (the in-memory model's own, or read from a checkpoint).</param>
    /// <param name="release">Called after a layer's blocks are done (frees a streamed layer); null for resident layers.</param>
    public LayerwiseKfac(ILayeredModel parts, int layers, Func<int, DecoderLayer> load, Action<DecoderLayer>? release = null)
    {
        _parts = parts;
        _layers = layers;
        _load = load;
        _release = release;
    }

    /// <summary>The in-memory model, its layers resident.</summary>
    public static LayerwiseKfac For(PretrainedModel model) =>
        model is ILayeredModel parts ? new(parts, model.Config.NumLayers, parts.Layer)
            : throw new UsageException("curvature", $"a {model.Config.ModelType} model has no layer-wise path");

    /// <summary>A streamed model: each layer read from the checkpoint for its backward step and freed after.</summary>
    public static LayerwiseKfac For(LayerStream stream) => new(stream.Parts, stream.Layers, stream.LoadLayer, LayerStream.Release);

    /// <summary>One projection of one layer, by its type within the layer ("attn.c_attn").</summary>
    public sealed record Site(int Layer, string Type, string Name);

    /// <summary>What one layer's backward step gives for one requested site (the caller takes ownership of the tensors).</summary>
    public sealed record SiteResult(int Index, KfacBlock Block, Tensor? Gradient);

    /// <summary>
    /// Runs the sweep and hands each site's block to <paramref name="consume"/> as soon as its layer is done (top layer
    /// first), so a caller that reduces each block (top eigenpairs, diag G) never holds more than one layer's factors.
    /// <paramref name="gradients"/>: also ∂L/∂W of each site, flat in storage order, float64 (the loss gradient is
    /// back-propagated beside the curvature factors). Returns the loss.
    /// </summary>
    public double Compute(LanguageModelBatch batch, IReadOnlyList<Site> sites, int samples, long seed, bool gradients,
        Action<SiteResult> consume, IProgress<ProgressTick>? progress = null)
    {
        if (sites.Count == 0) throw new ArgumentException("K-FAC needs at least one layer");
        foreach (var s in sites)
            if (s.Layer < 0 || s.Layer >= _layers) throw new ArgumentException($"site {s.Name}: layer {s.Layer} is not within 0..{_layers - 1}");
        using var grad = torch.enable_grad();
        var boundaries = new List<Tensor>();
        LayerContext? context = null;
        var incoming = new List<Tensor>();   // ∂(factor)/∂(boundary) per factor; the loss gradient first when asked
        double loss;
        int lowest = sites.Min(s => s.Layer);
        try
        {
            // Forward: keep each layer's input, no graph.
            using (torch.no_grad())
            {
                using (var scope = torch.NewDisposeScope())
                {
                    var (h, c) = _parts.Embed(batch.Ids);
                    c.Cos?.DetachFromDisposeScope();
                    c.Sin?.DetachFromDisposeScope();
                    context = c;
                    boundaries.Add(h.DetachFromDisposeScope());
                }
                for (int l = 0; l < _layers; l++)
                {
                    var layer = _load(l);
                    try
                    {
                        using var scope = torch.NewDisposeScope();
                        boundaries.Add(layer.Forward(boundaries[l], context).DetachFromDisposeScope());
                    }
                    finally { _release?.Invoke(layer); }
                }
            }
            // Head: the output factors (the same draws as the whole-graph K-FAC: the same logits, generator and order).
            using (var scope = torch.NewDisposeScope())
            {
                var top = boundaries[_layers].detach().requires_grad_(true);
                var logits = _parts.Head(top);
                var l = batch.Loss(logits);
                loss = l.to_type(ScalarType.Float64).item<double>();
                if (gradients)
                {
                    if (!double.IsFinite(loss)) throw new NumericalException("the loss is not finite on the calibration batch");
                    incoming.Add(torch.autograd.grad([l], [top], retain_graph: true)[0].detach().DetachFromDisposeScope());
                }
                var gen = new Generator((ulong)seed);
                foreach (var f in batch.OutputCurvatureFactors(logits, gen, samples))
                {
                    using var inner = torch.NewDisposeScope();
                    incoming.Add(torch.autograd.grad([logits], [top], [f], retain_graph: true)[0].detach().DetachFromDisposeScope());
                    f.Dispose();
                }
            }
            int firstFactor = gradients ? 1 : 0;
            progress?.Report(new ProgressTick("k-fac", 0, _layers - lowest, "layers"));
            for (int l = _layers - 1; l >= lowest; l--)
            {
                var here = Enumerable.Range(0, sites.Count).Where(i => sites[i].Layer == l).ToList();
                var layer = _load(l);
                var finished = new List<SiteResult>();
                try
                {
                    using var scope = torch.NewDisposeScope();
                    var maps = here.Select(i => layer.GetProjection(sites[i].Type)).ToList();
                    using var probe = new KfacBlock.CapturingProbe();
                    var weights = gradients ? maps.Select(KfacBlock.WeightOf).ToList() : [];
                    var had = weights.Select(w => w.requires_grad).ToArray();
                    foreach (var m in maps) m.Probe = probe;
                    foreach (var w in weights) w.requires_grad = true;
                    try
                    {
                        var x = boundaries[l].detach().requires_grad_(true);
                        var y = layer.Forward(x, context!);
                        foreach (var m in maps) m.Probe = null;
                        var ys = maps.Select(m => probe.Outputs[m]).ToList();
                        // A from the recomputed inputs, G from the factors' gradients: each kept as rows while narrower than wide
                        // (SecondMoment), so a 1B layer's 8192-wide factors are never summed into [8192]² matrices.
                        var a = new List<SecondMoment>();
                        var g = new List<SecondMoment>();
                        try
                        {
                            foreach (var m in maps)
                            {
                                a.Add(SecondMoment.Of(probe.Inputs[m], m.InFeatures));
                                g.Add(new SecondMoment(m.OutFeatures));
                            }
                            var weightGrads = new Tensor?[maps.Count];
                            bool needInput = l > lowest;
                            for (int k = 0; k < incoming.Count; k++)
                            {
                                using var inner = torch.NewDisposeScope();
                                bool isLoss = k < firstFactor;
                                var wrt = (isLoss ? weights.Cast<Tensor>() : ys).Concat(needInput ? [x] : []).ToList();
                                var grads = torch.autograd.grad([y], wrt, [incoming[k]], retain_graph: true, allow_unused: true);
                                for (int j = 0; j < maps.Count; j++)
                                {
                                    if (grads[j] is null || grads[j].IsInvalid) continue;
                                    if (isLoss) weightGrads[j] = grads[j].detach().reshape(-1).to_type(ScalarType.Float64).MoveToOuterDisposeScope();
                                    else g[j].Add(grads[j].reshape(-1, maps[j].OutFeatures));
                                }
                                if (needInput)
                                {
                                    var next = grads[^1].detach().DetachFromDisposeScope();
                                    incoming[k].Dispose();
                                    incoming[k] = next;
                                }
                            }
                            for (int j = 0; j < maps.Count; j++)
                            {
                                var block = new KfacBlock(sites[here[j]].Name, a[j], g[j].Complete(batch.Predictions), maps[j].Layout);
                                var gradient = weightGrads[j];
                                gradient?.DetachFromDisposeScope(); // out of this layer's scope: the consumer owns it (and the block)
                                finished.Add(new SiteResult(here[j], block, gradient));
                            }
                        }
                        catch
                        {
                            foreach (var m in a.Concat(g)) m.Dispose();
                            throw;
                        }
                    }
                    finally
                    {
                        foreach (var m in maps) m.Probe = null;
                        for (int i = 0; i < weights.Count; i++) weights[i].requires_grad = had[i];
                    }
                }
                finally
                {
                    _release?.Invoke(layer);
                }
                // Outside the layer's scope, so that what the consumer makes is its own.
                foreach (var r in finished) consume(r);
                progress?.Report(new ProgressTick("k-fac", _layers - l, _layers - lowest, "layers"));
            }
            return loss;
        }
        finally
        {
            foreach (var t in boundaries) t.Dispose();
            foreach (var t in incoming) t.Dispose();
            context?.Dispose();
        }
    }
}
