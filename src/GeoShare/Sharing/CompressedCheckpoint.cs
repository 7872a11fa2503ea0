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
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "preprocessor_config.json",
         "vocab.txt", "sentence_bert_config.json"];

    public static bool IsCompressed(string dir) => Checkpoint.IsGeoShareCompressed(dir);

    public static string SharedName(string type, int color, string what) => $"geoshare.shared.{type}.{color}.{what}";

    /// <summary>The dtype a compressed copy of <paramref name="model"/> is saved in by default: its checkpoint's (F16 stays F16), else its own.</summary>
    public static ScalarType DefaultSaveDType(PretrainedModel model) => model.CheckpointDType ?? model.DType;

    /// <summary>
    /// Writes the folder atomically: built in a staging folder beside <paramref name="outDir"/> (removed if this fails
    /// or the process is interrupted), then renamed into place. Every floating-point tensor is stored in
    /// <paramref name="saveDType"/>, by default <see cref="DefaultSaveDType"/>. With <paramref name="replace"/> an
    /// existing folder is replaced, but only one that GeoShare wrote (<see cref="IsReplaceable"/>).
    /// </summary>
    public static void Save(PretrainedModel model, SharingPlan plan, string sourceDir, string outDir, object? report = null, ScalarType? saveDType = null, bool replace = false)
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

        Write((path, metadata) => SafetensorsFile.Write(path, tensors.OrderBy(t => t.Item1, StringComparer.Ordinal).ToList(), metadata, stored),
            plan, sourceDir, outDir, report, replace);
    }

    /// <summary>
    /// Writes the folder as <see cref="Save"/> does, its weights from a spill that the layer-wise compressor filled
    /// (<see cref="StreamingCompressor"/>): the same files, atomically.
    /// </summary>
    public static void Save(SafetensorsSpill weights, SharingPlan plan, string sourceDir, string outDir, object? report = null, bool replace = false) =>
        Write((path, metadata) => weights.Finish(path, metadata), plan, sourceDir, outDir, report, replace);

    /// <summary>Replaces an existing output folder that GeoShare wrote (the user asked for it with --force), atomically for readers of the new one.</summary>
    public static void Replace(PretrainedModel model, SharingPlan plan, string sourceDir, string outDir, object? report = null, ScalarType? saveDType = null) =>
        Save(model, plan, sourceDir, outDir, report, saveDType, replace: true);

    /// <summary>Every file name a compressed folder may hold: what <see cref="Save"/> writes.</summary>
    public static IReadOnlyList<string> WrittenFiles { get; } = [Checkpoint.SingleFile, PlanFile, ReportFile, .. CopiedFiles];

    /// <summary>
    /// Whether <paramref name="dir"/> is a folder that GeoShare wrote, so that --force may replace it: it holds the
    /// plan and weights files and nothing but the files GeoShare writes (no folder, no link, no other file). An empty
    /// folder also qualifies. <paramref name="why"/> says what disqualifies it.
    /// </summary>
    public static bool IsReplaceable(string dir, out string why)
    {
        why = "";
        var entries = Directory.EnumerateFileSystemEntries(dir).ToList();
        if (entries.Count == 0) return true;
        foreach (var e in entries)
        {
            string name = Path.GetFileName(e);
            var info = new FileInfo(e);
            if (Directory.Exists(e) || info.LinkTarget is not null || !WrittenFiles.Contains(name))
            {
                why = $"it holds '{name}', which GeoShare does not write";
                return false;
            }
        }
        if (!File.Exists(Path.Combine(dir, PlanFile)) || !File.Exists(Path.Combine(dir, Checkpoint.SingleFile)))
        {
            why = $"it has no {PlanFile} and {Checkpoint.SingleFile} (not a GeoShare compressed folder)";
            return false;
        }
        return true;
    }

    /// <summary>The safetensors metadata key of the plan's digest: a compressed folder verifies that its plan is the one its weights were written with.</summary>
    public const string PlanDigestKey = "geoshare_plan_sha256";

    private static string Digest(byte[] planBytes) => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(planBytes));

    private static void Write(Action<string, Dictionary<string, string>> writeWeights, SharingPlan plan, string sourceDir, string outDir, object? report, bool replace)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(outDir));
        if (File.Exists(full) || (!Directory.Exists(full) && new FileInfo(full).LinkTarget is not null))
            throw BadInputException.For(outDir, "is a file (or a link), not a folder; give a folder name");
        bool replacing = Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any();
        if (replacing && !replace)
            throw BadInputException.For(outDir, "output folder exists and is not empty (save into another, or replace it)");
        if (replacing && !IsReplaceable(full, out string why))
            throw BadInputException.For(outDir, $"will not replace a folder GeoShare did not write ({why})");
        PartialOutputs.RemoveStale(full);
        string staging = PartialOutputs.StagingName(full, "tmp");
        PartialOutputs.Step(() =>
        {
            if (Directory.Exists(staging)) Directory.Delete(staging, true);
            Directory.CreateDirectory(staging);
            PartialOutputs.Register(staging);
        });
        try
        {
            byte[] planBytes = System.Text.Encoding.UTF8.GetBytes(plan.ToJson() + "\n");
            PartialOutputs.Step(() => writeWeights(Path.Combine(staging, Checkpoint.SingleFile),
                new Dictionary<string, string> { ["format"] = "pt", ["geoshare"] = FormatTag, [PlanDigestKey] = Digest(planBytes) }));
            PartialOutputs.Step(() => AtomicFile.WriteBytes(Path.Combine(staging, PlanFile), planBytes));
            if (report is not null) PartialOutputs.Step(() => JsonOutput.Write(Path.Combine(staging, ReportFile), report));
            foreach (var f in CopiedFiles)
            {
                string src = Path.Combine(sourceDir, f);
                if (File.Exists(src)) PartialOutputs.Step(() => File.Copy(src, Path.Combine(staging, f)));
            }
            // One step: an interrupt never finds the old folder moved aside and the new one not in place.
            PartialOutputs.Step(() =>
            {
                string? old = null;
                if (replacing)
                {
                    old = PartialOutputs.StagingName(full, "old");
                    Directory.Move(full, old);
                }
                else if (Directory.Exists(full)) Directory.Delete(full);
                try { Directory.Move(staging, full); }
                catch
                {
                    if (old is not null) Directory.Move(old, full);
                    throw;
                }
                PartialOutputs.Forget(staging);
                if (old is not null) Directory.Delete(old, true);
            });
        }
        catch
        {
            PartialOutputs.Delete(staging);
            PartialOutputs.Forget(staging);
            throw;
        }
    }

    public static PretrainedModel Load(string dir, ScalarType dtype)
    {
        var checkpoint = Checkpoint.Open(dir);
        string planPath = Path.Combine(dir, PlanFile);
        VerifyPlanDigest(dir, planPath);
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
                        var basis = new Parameter(TakePlanned(checkpoint, src, SharedName(type, c, "basis"), planPath, din, tp.Ranks![c]), requires_grad: false);
                        foreach (int l in groups[c])
                        {
                            var site = model.Site(type, l);
                            var coeff = TakePlanned(checkpoint, src, site.Name + ".coeff", planPath, tp.Ranks[c], dout);
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
                        var weight = new Parameter(TakePlanned(checkpoint, src, SharedName(type, c, "weight"), planPath, shape), requires_grad: false);
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

    /// <summary>
    /// A compressed folder streamed layer by layer (<see cref="LayerStream"/>): the parts outside the layers resident, each
    /// layer read when it runs, its compressed projections built from its group's basis (or tied matrix) and its own
    /// coefficients.
    /// </summary>
    public static LayerStream OpenStream(string dir, ScalarType dtype = ScalarType.Float32)
    {
        var checkpoint = Checkpoint.Open(dir);
        string planPath = Path.Combine(dir, PlanFile);
        VerifyPlanDigest(dir, planPath);
        var plan = SharingPlan.Load(planPath);
        var config = checkpoint.Config;
        if (!config.Architecture.StreamsLayers) throw new UsageException("streaming", $"a {config.ModelType} model has no layer-wise path (the layered ones: {Architectures.LayeredTypes})");
        var compressedSites = new HashSet<string>();
        foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
            for (int l = 0; l < tp.Coloring.Length; l++)
                compressedSites.Add($"{config.Architecture.LayerPrefix(l)}.{type}");
        var shell = LayerStream.BuildShell(config, new CompressedTensorSource(checkpoint, dtype, compressedSites));
        plan.Validate(shell, planPath);
        var prefixes = LayerStream.LayerPrefixes(config);
        var strays = checkpoint.TensorNames.Where(n => !prefixes.Any(n.StartsWith) && !n.StartsWith("geoshare.shared.", StringComparison.Ordinal)
            && !shell.UniqueParameters().Any(p => p.Name == n)).Order(StringComparer.Ordinal).ToList();
        if (strays.Count > 0) throw BadInputException.For(Path.Combine(dir, Checkpoint.SingleFile), $"holds {strays.Count} tensor(s) the plan does not use, e.g. '{strays[0]}'");
        shell.CheckpointDType = checkpoint.StorageDType;

        DecoderLayer Load(int l)
        {
            var src = new CompressedTensorSource(checkpoint, dtype, compressedSites);
            var layer = config.Architecture.BuildLayer(config, src, l);
            src.Constructing = false;
            foreach (var (type, tp) in plan.Types.Where(t => t.Value.Mode != SharingMode.Dense))
            {
                var site = shell.Site(type, l);
                int color = tp.Coloring[l];
                var placeholder = layer.GetProjection(type);
                var shared = tp.Mode == SharingMode.Basis
                    ? TakePlanned(checkpoint, src, SharedName(type, color, "basis"), planPath, site.InFeatures, tp.Ranks![color])
                    : TakePlanned(checkpoint, src, SharedName(type, color, "weight"), planPath, TiedShape(site, placeholder.Layout));
                layer.SetProjection(type, ReadProjection(checkpoint, src, planPath, tp, color, site, placeholder.Layout, new Parameter(shared, requires_grad: false)));
                placeholder.Dispose();
            }
            return layer;
        }
        return new LayerStream(shell, dir, LayerStream.StoredParameters(checkpoint), Load);
    }

    private static long[] TiedShape(ProjectionSite site, WeightLayout layout) =>
        layout == WeightLayout.InOut ? [site.InFeatures, site.OutFeatures] : [site.OutFeatures, site.InFeatures];

    /// <summary>One layer's compressed projection on its group's <paramref name="shared"/> tensor (a basis, or a tied matrix).</summary>
    private static LinearMap ReadProjection(Checkpoint checkpoint, TensorSource src, string planPath, TypePlan tp, int color,
        ProjectionSite site, WeightLayout layout, Parameter shared)
    {
        var bias = src.Has(site.Name + ".bias") ? src.Take(site.Name + ".bias", site.OutFeatures) : null;
        if (tp.Mode == SharingMode.Tie) return new DenseLinear(shared, bias, layout);
        var coeff = TakePlanned(checkpoint, src, site.Name + ".coeff", planPath, tp.Ranks![color], site.OutFeatures);
        return new SharedBasisLinear(shared, coeff, bias);
    }

    /// <summary>
    /// A compressed folder's weights record the digest of the plan they were written with: an edited, swapped or
    /// damaged plan is an error naming both files, not a model that silently computes something else.
    /// </summary>
    private static void VerifyPlanDigest(string dir, string planPath)
    {
        string weights = Path.Combine(dir, Checkpoint.SingleFile);
        if (!File.Exists(weights)) throw BadInputException.For(weights, $"missing (a GeoShare compressed folder holds {Checkpoint.SingleFile} beside {PlanFile})");
        var metadata = SafetensorsFile.Open(weights).Metadata;
        if (!metadata.TryGetValue(PlanDigestKey, out var recorded))
            throw BadInputException.For(weights, $"records no digest of {planPath} ({PlanDigestKey} in its metadata): not written by this GeoShare, or edited");
        string actual = Digest(BoundedFile.ReadAllBytes(planPath, BoundedFile.JsonLimit, "plan file"));
        if (!string.Equals(recorded, actual, StringComparison.OrdinalIgnoreCase))
            throw BadInputException.For(planPath, $"does not match {weights}: the weights were written with a plan of digest {BoundedFile.Quote(recorded, 16)}, this plan's is {actual[..16]}… (the plan was edited or replaced)");
    }

    /// <summary>
    /// For a folder without its plan: weights that GeoShare wrote compressed cannot be read as a dense model, so the
    /// missing plan is named (instead of the first dense tensor it lacks).
    /// </summary>
    public static void RefuseIfPlanMissing(string dir)
    {
        string weights = Path.Combine(dir, Checkpoint.SingleFile);
        if (IsCompressed(dir) || !File.Exists(weights)) return;
        if (SafetensorsFile.Open(weights).Metadata.TryGetValue("geoshare", out var tag) && tag == FormatTag)
            throw BadInputException.For(Path.Combine(dir, PlanFile), $"missing: {weights} holds a GeoShare compressed model, which needs its plan");
    }

    /// <summary>Takes a tensor whose shape the plan implies; a mismatch names the plan, not config.json.</summary>
    private static Tensor TakePlanned(Checkpoint checkpoint, TensorSource src, string name, string planPath, params long[] shape)
    {
        if (checkpoint.Contains(name) && !checkpoint.Entry(name).Shape.SequenceEqual(shape))
            throw BadInputException.For(checkpoint.FileOf(name),
                $"tensor '{name}' has shape {SafetensorsFile.FormatShape(checkpoint.Entry(name).Shape)}, {planPath} implies {SafetensorsFile.FormatShape(shape)}");
        if (!checkpoint.Contains(name))
            throw BadInputException.For(Path.Combine(checkpoint.Dir, Checkpoint.SingleFile), $"has no tensor '{name}', which {planPath} needs");
        return src.Take(name, shape);
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
