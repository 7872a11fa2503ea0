using System.Text.Json;
using GeoShare.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>
/// A compressed model as a folder a user can ship: the original config.json and tokenizer/preprocessor files,
/// the plan (geoshare_plan.json), and model.safetensors holding every tensor once: shared bases and tied
/// matrices under "geoshare.shared.{type}.{color}.basis|weight", each layer's coefficients under
/// "{projection}.coeff", everything else under its Hugging Face name.
/// </summary>
public static class CompressedCheckpoint
{
    public const string PlanFile = Checkpoint.GeoSharePlanFile;
    public const string ReportFile = "geoshare_compression.json";
    public const string FormatTag = "geoshare-compressed/1";
    private static readonly string[] CopiedFiles =
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "preprocessor_config.json"];

    public static bool IsCompressed(string dir) => Checkpoint.IsGeoShareCompressed(dir);

    public static string SharedName(string type, int color, string what) => $"geoshare.shared.{type}.{color}.{what}";

    /// <summary>The dtype a compressed copy of <paramref name="model"/> is saved in by default: its checkpoint's (F16 stays F16), else its own.</summary>
    public static ScalarType DefaultSaveDType(PretrainedModel model) => model.CheckpointDType ?? model.DType;

    /// <summary>
    /// Writes the folder atomically: built beside <paramref name="outDir"/>, then renamed into place. Every floating-point
    /// tensor is stored in <paramref name="saveDType"/>, by default <see cref="DefaultSaveDType"/>.
    /// </summary>
    public static void Save(PretrainedModel model, SharingPlan plan, string sourceDir, string outDir, object? report = null, ScalarType? saveDType = null)
    {
        var stored = saveDType ?? DefaultSaveDType(model);
        if (stored is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            throw new UsageException("save_dtype", $"must be float32, float16, bfloat16 or float64, got {stored}");
        var tensors = new List<(string, Tensor)>();
        var compressed = new HashSet<string>();
        foreach (var (type, tp) in plan.Types)
        {
            if (tp.Mode == SharingMode.Dense) continue;
            var groups = tp.Groups();
            for (int c = 0; c < groups.Count; c++)
            {
                var first = model.GetProjection(model.Site(type, groups[c][0]));
                tensors.Add(tp.Mode == SharingMode.Basis
                    ? (SharedName(type, c, "basis"), ((SharedBasisLinear)first).Basis)
                    : (SharedName(type, c, "weight"), ((DenseLinear)first).Weight));
                foreach (int l in groups[c])
                {
                    var site = model.Site(type, l);
                    compressed.Add(site.Name);
                    var map = model.GetProjection(site);
                    if (map is SharedBasisLinear s) tensors.Add((site.Name + ".coeff", s.Coefficients));
                    if (map.Bias is { } b) tensors.Add((site.Name + ".bias", b));
                }
            }
        }
        foreach (var (name, p) in model.UniqueParameters())
        {
            int dot = name.LastIndexOf('.');
            if (dot > 0 && compressed.Contains(name[..dot])) continue;
            tensors.Add((name, p));
        }

        string full = Path.GetFullPath(outDir);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw BadInputException.For(outDir, "output folder exists and is not empty (save into another, or replace it)");
        string staging = full + $".tmp-{Environment.ProcessId}";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        try
        {
            SafetensorsFile.Write(Path.Combine(staging, Checkpoint.SingleFile), tensors.OrderBy(t => t.Item1, StringComparer.Ordinal).ToList(),
                new Dictionary<string, string> { ["format"] = "pt", ["geoshare"] = FormatTag }, stored);
            plan.Save(Path.Combine(staging, PlanFile));
            if (report is not null) JsonOutput.Write(Path.Combine(staging, ReportFile), report);
            foreach (var f in CopiedFiles)
            {
                string src = Path.Combine(sourceDir, f);
                if (File.Exists(src)) File.Copy(src, Path.Combine(staging, f));
            }
            if (Directory.Exists(full)) Directory.Delete(full);
            Directory.Move(staging, full);
        }
        catch
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, true);
            throw;
        }
    }

    /// <summary>Replaces an existing output folder (the user asked for it with --force), atomically for readers of the new one.</summary>
    public static void Replace(PretrainedModel model, SharingPlan plan, string sourceDir, string outDir, object? report = null, ScalarType? saveDType = null)
    {
        string full = Path.GetFullPath(outDir);
        string old = full + $".old-{Environment.ProcessId}";
        bool moved = false;
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
        {
            Directory.Move(full, old);
            moved = true;
        }
        try { Save(model, plan, sourceDir, outDir, report, saveDType); }
        catch
        {
            if (moved && !Directory.Exists(full)) Directory.Move(old, full);
            throw;
        }
        if (moved) Directory.Delete(old, true);
    }

    public static PretrainedModel Load(string dir, ScalarType dtype)
    {
        var checkpoint = Checkpoint.Open(dir);
        string planPath = Path.Combine(dir, PlanFile);
        var plan = SharingPlan.Load(planPath);
        var compressedSites = new Dictionary<string, (string Type, int Layer)>();
        foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
            for (int l = 0; l < tp.Coloring.Length; l++)
                compressedSites[$"{checkpoint.Config.Architecture.LayerPrefix(l)}.{type}"] = (type, l);

        var src = new CompressedTensorSource(checkpoint, dtype, compressedSites.Keys.ToHashSet());
        var model = ModelLoader.Build(checkpoint.Config, src);
        src.Constructing = false;
        plan.Validate(model, planPath);
        using (torch.no_grad())
            foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
            {
                var groups = tp.Groups();
                for (int c = 0; c < groups.Count; c++)
                {
                    var site0 = model.Site(type, groups[c][0]);
                    int din = site0.InFeatures, dout = site0.OutFeatures;
                    if (tp.Mode == SharingMode.Basis)
                    {
                        var basis = new Parameter(src.Take(SharedName(type, c, "basis"), din, tp.Ranks![c]), requires_grad: false);
                        foreach (int l in groups[c])
                        {
                            var site = model.Site(type, l);
                            var coeff = src.Take(site.Name + ".coeff", tp.Ranks[c], dout);
                            var bias = src.Has(site.Name + ".bias") ? src.Take(site.Name + ".bias", dout) : null;
                            var placeholder = model.GetProjection(site);
                            model.SetProjection(site, new SharedBasisLinear(basis, coeff, bias));
                            placeholder.Dispose(); // its tensors were never filled; free them now, not at some finalizer
                        }
                    }
                    else
                    {
                        var layout = model.GetProjection(site0).Layout;
                        var shape = layout == WeightLayout.InOut ? new long[] { din, dout } : [dout, din];
                        var weight = new Parameter(src.Take(SharedName(type, c, "weight"), shape), requires_grad: false);
                        foreach (int l in groups[c])
                        {
                            var site = model.Site(type, l);
                            var bias = src.Has(site.Name + ".bias") ? src.Take(site.Name + ".bias", dout) : null;
                            var placeholder = model.GetProjection(site);
                            model.SetProjection(site, new DenseLinear(weight, bias, layout));
                            placeholder.Dispose(); // its tensors were never filled; free them now, not at some finalizer
                        }
                    }
                }
            }
        var unused = checkpoint.TensorNames.Where(n => !src.Used.Contains(n)).Order(StringComparer.Ordinal).ToList();
        if (unused.Count > 0) throw BadInputException.For(Path.Combine(dir, Checkpoint.SingleFile), $"holds {unused.Count} tensor(s) the plan does not use, e.g. '{unused[0]}'");
        model.CheckpointDType = checkpoint.StorageDType;
        return model;
    }

    /// <summary>Reads a compressed folder: the dense weights and biases of compressed projections are placeholders, replaced after construction.</summary>
    private sealed class CompressedTensorSource(Checkpoint checkpoint, ScalarType dtype, HashSet<string> compressedSites) : TensorSource(dtype)
    {
        private readonly CheckpointTensorSource _inner = new(checkpoint, dtype);
        public IReadOnlyCollection<string> Used => _inner.Used;
        /// <summary>While the dense architecture is built, a compressed projection's weight and bias are placeholders.</summary>
        public bool Constructing { get; set; } = true;

        private bool IsPlaceholder(string name)
        {
            int dot = name.LastIndexOf('.');
            return Constructing && dot > 0 && compressedSites.Contains(name[..dot]);
        }

        public override bool Has(string name) => checkpoint.Contains(name);
        public override Tensor Take(string name, params long[] shape) =>
            IsPlaceholder(name) ? Placeholder(shape) : _inner.Take(name, shape);

        /// <summary>A tensor of the right shape that takes no memory: one zero broadcast (stride 0); never read, replaced after construction.</summary>
        private Tensor Placeholder(long[] shape)
        {
            using var zero = torch.zeros([], dtype: DType);
            return zero.expand(shape);
        }
        public override Tensor TakeOnes(string name, params long[] shape) => Take(name, shape);
        public override Tensor TakeZeros(string name, params long[] shape) => Take(name, shape);
    }
}
