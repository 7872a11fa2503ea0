using GeoShare.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>
/// Calibration grams collected layer by layer (<see cref="LayerStream"/>) and kept on disk, one safetensors file per layer,
/// so that only the grams a group needs are in memory. Projections that read the same input tensor (LLaMA's q/k/v and
/// gate/up) store one gram.
/// </summary>
public sealed class SpilledGrams : IGramSource, IDisposable
{
    private readonly string _dir;
    private readonly Dictionary<string, (int Layer, string Stored)> _where;
    public long Rows { get; }

    private SpilledGrams(string dir, Dictionary<string, (int, string)> where, long rows)
    {
        _dir = dir;
        _where = where;
        Rows = rows;
    }

    public bool Contains(string site) => _where.ContainsKey(site);

    /// <summary>XᵀX (float64) of the inputs of <paramref name="site"/>; the caller disposes it.</summary>
    public Tensor Gram(string site)
    {
        var (layer, stored) = _where.TryGetValue(site, out var w) ? w : throw new ArgumentException($"no gram collected for '{site}'");
        return SafetensorsFile.Open(LayerFile(_dir, layer)).Read(stored, ScalarType.Float64);
    }

    /// <summary>The grams of <paramref name="sites"/> in memory (for plans that compare layers by them, e.g. similarity).</summary>
    public ActivationGrams Load(IEnumerable<string> sites) => ActivationGrams.Of(sites.Distinct().ToDictionary(s => s, Gram), Rows);

    private static string LayerFile(string dir, int layer) => Path.Combine(dir, $"grams-{layer}.safetensors");

    /// <summary>
    /// Runs the calibration set through the model one layer at a time and records XᵀX of the inputs of every site in
    /// <paramref name="sites"/>: the numbers <see cref="ActivationGrams.Collect"/> gives on the whole model (same batches,
    /// same operations). <paramref name="spillDir"/> is created and owned (removed on dispose).
    /// </summary>
    public static SpilledGrams Collect(LayerStream stream, CalibrationSet calibration, IReadOnlyCollection<ProjectionSite> sites, string spillDir,
        IProgress<ProgressTick>? progress = null)
    {
        Directory.CreateDirectory(spillDir);
        var where = new Dictionary<string, (int, string)>();
        long? rows = null;
        var probe = new GramProbe();
        var ids = calibration.Batches(stream.Shell).ToList();
        try
        {
            var (hidden, contexts) = stream.Run(ids,
                before: (l, layer) =>
                {
                    probe.Clear();
                    foreach (var s in sites.Where(s => s.Layer == l)) probe.Watch(layer.GetProjection(s.Type), s);
                },
                after: (l, layer) =>
                {
                    if (probe.Sites.Count == 0) return;
                    var stored = probe.Sites.Select(s => probe.StoredAs(s.Name)).ToList();
                    probe.Complete();
                    SafetensorsFile.Write(LayerFile(spillDir, l), stored.Distinct().Select(n => (n, probe.Gram(n))).ToList());
                    foreach (var (site, canonical) in probe.Sites.Zip(stored)) where[site.Name] = (l, canonical);
                    if (rows is long r && r != probe.Rows) throw new InvalidOperationException($"layer {l} saw {probe.Rows} rows, earlier layers {r}");
                    rows = probe.Rows;
                    probe.Clear();
                },
                progress, "calibrate");
            foreach (var h in hidden) h.Dispose();
            foreach (var c in contexts) c.Dispose();
        }
        catch
        {
            PartialOutputs.Delete(spillDir);
            throw;
        }
        finally
        {
            foreach (var t in ids) t.Dispose();
            probe.Clear();
        }
        return new SpilledGrams(spillDir, where, rows ?? 0);
    }

    public void Dispose() => PartialOutputs.Delete(_dir);
}

/// <summary>
/// <see cref="PlanCompressor.Apply"/> and <see cref="CompressedCheckpoint.Save"/> without the model in memory: group by
/// group, the members' weights are read from the checkpoint, their shared basis computed with the spilled grams, and
/// bases, coefficients and every untouched tensor go straight to the output's spill, in the order and dtypes the
/// in-memory path writes, so the saved file is the same.
/// </summary>
public static class StreamingCompressor
{
    /// <summary>Sites whose grams <paramref name="plan"/> needs: every layer of a type it compresses.</summary>
    public static IReadOnlyList<ProjectionSite> SitesNeeded(PretrainedModel shell, SharingPlan plan) =>
        shell.Sites.Where(s => plan.Types.TryGetValue(s.Type, out var tp) && tp.Mode != SharingMode.Dense).ToList();

    /// <param name="stored">dtype of the saved checkpoint's floating-point tensors</param>
    /// <param name="calibration">The calibration set, for the refit (<see cref="CompressionOptions.Refit"/>; by default from ratio 0.4).</param>
    /// <param name="refitSpill">Where the refit keeps the bases, first coefficients and tied matrices until it has run (in the
    /// model's dtype; deleted after); the caller registers it as a partial output. Needed when the refit runs.</param>
    public static CompressionReport Compress(LayerStream stream, SharingPlan plan, SpilledGrams grams, CompressionOptions options,
        SafetensorsSpill output, ScalarType stored, IProgress<ProgressTick>? progress = null, CalibrationSet? calibration = null, string? refitSpill = null)
    {
        var shell = stream.Shell;
        plan.Validate(shell, "plan");
        bool refit = options.Refit ?? (plan.Ratio ?? 0) >= CompressionOptions.AutoRefitRatio;
        if (refit && (calibration is null || refitSpill is null))
            throw new ArgumentException("the refit needs the calibration set and a spill path for the first coefficients");
        var dtype = shell.DType;
        var src = new CheckpointTensorSource(Checkpoint.Open(stream.Dir), dtype);
        var compressed = new HashSet<string>();
        // With the refit, the group walk's tensors wait in the model's dtype (what the in-memory model holds) for the layer pass.
        using var pending = refit ? new SafetensorsSpill(refitSpill!) : null;
        void Put(string name, Tensor t)
        {
            if (pending is not null) pending.Add(name, t, dtype);
            else output.Add(name, t, stored);
        }
        WeightLayout Layout(ProjectionSite s) => shell.GetProjection(s).Layout;
        var report = PlanCompressor.CompressGroups(shell, plan, options, s => ProjectionWeights.InOut64(src, s, Layout(s)), s => grams.Gram(s.Name),
            grams.Rows, (type, color, g) =>
            {
                if (g.Basis is { } basis)
                {
                    Put(CompressedCheckpoint.SharedName(type, color, "basis"), basis.to_type(dtype));
                    for (int i = 0; i < g.Members.Length; i++) Put(g.Members[i].Name + ".coeff", g.Coefficients[i].to_type(dtype));
                }
                else
                {
                    var layout = Layout(g.Members[0]);
                    Put(CompressedCheckpoint.SharedName(type, color, "weight"), (layout == WeightLayout.InOut ? g.Tied! : g.Tied!.t()).contiguous().to_type(dtype));
                }
                foreach (var s in g.Members)
                {
                    if (shell.GetProjection(s).Bias is not null) output.Add(s.Name + ".bias", src.TakeZeros(s.Name + ".bias", s.OutFeatures), stored);
                    compressed.Add(s.Name);
                }
            }, progress, ownedGrams: true);
        bool refitted = false;
        if (pending is not null)
        {
            refitted = RefitLayers(stream, plan, src, pending, output, stored, calibration!, options.Coefficients, progress);
            // The bases and tied matrices as the walk made them; the coefficients are the refit's.
            foreach (var name in pending.Names.Where(n => !n.EndsWith(".coeff", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToList())
            {
                using var t = pending.Read(name);
                output.Add(name, t, stored);
            }
        }
        using (torch.no_grad())
        {
            // Everything else under its name, as the in-memory model's unique parameters: layer tensors read one at a time.
            var prefixes = LayerStream.LayerPrefixes(shell.Config);
            foreach (var (name, p) in shell.UniqueParameters())
            {
                int dot = name.LastIndexOf('.');
                if (dot > 0 && compressed.Contains(name[..dot])) continue;
                if (!prefixes.Any(name.StartsWith)) { output.Add(name, p, stored); continue; }
                using var t = src.Take(name, p.shape);
                output.Add(name, t, stored);
            }
        }
        long modelBefore = shell.ParameterCount();
        long modelAfter = modelBefore - report.Sum(r => r.ParametersBefore) + report.Sum(r => r.ParametersAfter);
        return new CompressionReport(report, report.Sum(r => r.ParametersBefore), report.Sum(r => r.ParametersAfter),
            modelBefore, modelAfter, modelAfter * dtype.ElementSize(), refitted);
    }

    /// <summary>
    /// <see cref="PlanCompressor"/>'s refit, one layer at a time: the calibration batches' hidden states go through the
    /// compressed layers in order; at each layer its compressed projections' inputs are measured with the layer's first
    /// coefficients (as the in-memory refit measures them, earlier layers refitted), each basis member's coefficients are
    /// solved again for its original weight (the basis fixed) and written to <paramref name="output"/>, and the refitted
    /// layer gives the next one's inputs. Returns whether any coefficients were refitted (none where every group is tied).
    /// </summary>
    private static bool RefitLayers(LayerStream stream, SharingPlan plan, CheckpointTensorSource src, SafetensorsSpill pending, SafetensorsSpill output,
        ScalarType stored, CalibrationSet calibration, ICoefficientSolver? solver, IProgress<ProgressTick>? progress)
    {
        var shell = stream.Shell;
        var types = plan.Types.Where(t => t.Value.Mode != SharingMode.Dense).ToList();
        if (!types.Any(t => t.Value.Mode == SharingMode.Basis)) return false;   // nothing to refit: no coefficients in the pending spill
        using var _ = torch.no_grad();
        var ids = calibration.Batches(shell).ToList();
        var hidden = new List<Tensor>();
        var contexts = new List<LayerContext>();
        var probe = new GramProbe();
        try
        {
            foreach (var batch in ids)
            {
                using var scope = torch.NewDisposeScope();
                var (h, c) = stream.Parts.Embed(batch);
                hidden.Add(h.DetachFromDisposeScope());
                c.Cos?.DetachFromDisposeScope();
                c.Sin?.DetachFromDisposeScope();
                contexts.Add(c);
            }
            progress?.Report(new ProgressTick("refit", 0, stream.Layers, "layers"));
            for (int l = 0; l < stream.Layers; l++)
            {
                var layer = stream.LoadLayer(l);
                try
                {
                    var members = new List<(ProjectionSite Site, SharedBasisLinear Map)>();
                    foreach (var (type, tp) in types)
                    {
                        var site = shell.Site(type, l);
                        int color = tp.Coloring[l];
                        var dense = layer.GetProjection(type);
                        var bias = dense.Bias?.detach().clone();
                        LinearMap map;
                        if (tp.Mode == SharingMode.Basis)
                        {
                            var basis = new Parameter(pending.Read(CompressedCheckpoint.SharedName(type, color, "basis")), requires_grad: false);
                            var m = new SharedBasisLinear(basis, pending.Read(site.Name + ".coeff"), bias);
                            members.Add((site, m));
                            map = m;
                        }
                        else map = new DenseLinear(new Parameter(pending.Read(CompressedCheckpoint.SharedName(type, color, "weight")), requires_grad: false), bias, dense.Layout);
                        layer.SetProjection(type, map);
                        LayerStream.Release(dense);
                    }
                    if (members.Count > 0)
                    {
                        // The inputs with this layer's first coefficients (the in-memory refit collects a layer's grams before changing it).
                        foreach (var (site, map) in members) probe.Watch(map, site);
                        for (int b = 0; b < hidden.Count; b++)
                        {
                            using var scope = torch.NewDisposeScope();
                            layer.Forward(hidden[b], contexts[b]);
                        }
                        probe.Complete();
                        foreach (var (site, map) in members)
                        {
                            using var scope = torch.NewDisposeScope();
                            var original = ProjectionWeights.InOut64(src, site, shell.GetProjection(site).Layout);
                            var basis = map.Basis.to_type(ScalarType.Float64);
                            var gram = probe.Gram(site.Name);
                            var c = solver?.Solve(site, basis, original, gram, probe.Rows) ?? SharedBasis.Refit(basis, original, gram);
                            map.Coefficients.copy_(c.to_type(map.Coefficients.dtype));
                            output.Add(site.Name + ".coeff", map.Coefficients, stored);
                        }
                        probe.Clear();
                    }
                    for (int b = 0; b < hidden.Count; b++)
                    {
                        Tensor next;
                        using (var scope = torch.NewDisposeScope())
                            next = layer.Forward(hidden[b], contexts[b]).DetachFromDisposeScope();
                        hidden[b].Dispose();
                        hidden[b] = next;
                    }
                }
                finally
                {
                    probe.Clear();
                    LayerStream.Release(layer);
                }
                progress?.Report(new ProgressTick("refit", l + 1, stream.Layers, "layers"));
            }
            return true;
        }
        finally
        {
            foreach (var t in ids.Concat(hidden)) t.Dispose();
            foreach (var c in contexts) c.Dispose();
        }
    }
}
