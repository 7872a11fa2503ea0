using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

public enum ModelTask { CausalLanguageModel, ImageClassification, SentenceEncoder }

/// <summary>
/// One shareable weight matrix of a model: <see cref="Name"/> is its module path in the checkpoint
/// (transformer.h.5.mlp.c_fc), <see cref="Type"/> the path inside a layer (mlp.c_fc); only matrices of one
/// type may share.
/// </summary>
public sealed record ProjectionSite(string Name, string Type, int Layer, int InFeatures, int OutFeatures)
{
    public string WeightName => Name + ".weight";
}

/// <summary>A module that holds named projections which sharing may replace.</summary>
public abstract class ProjectionOwner(string name) : Module<Tensor, Tensor>(name)
{
    public abstract LinearMap GetProjection(string localName);
    public abstract void SetProjection(string localName, LinearMap map);

    /// <summary>Swaps the registered child <paramref name="localName"/> for <paramref name="replacement"/>.</summary>
    protected LinearMap Swap(string localName, LinearMap current, LinearMap replacement)
    {
        if (current.InFeatures != replacement.InFeatures || current.OutFeatures != replacement.OutFeatures)
            throw new ArgumentException($"{localName}: replacement maps {replacement.InFeatures}→{replacement.OutFeatures}, expected {current.InFeatures}→{current.OutFeatures}");
        replacement.Probe = current.Probe;
        register_module(localName, null!);
        register_module(localName, replacement);
        return replacement;
    }

    public override Tensor forward(Tensor input) => throw new NotSupportedException($"{GetType().Name} is called through its parent");
}

/// <summary>A Hugging Face wrapper module that holds one projection named "dense" (ViTIntermediate, ViTOutput,
/// ViTSelfOutput, BertIntermediate): its checkpoint key is <c>{prefix}.dense</c>.</summary>
public sealed class DenseProjection : ProjectionOwner
{
    private LinearMap dense;

    public DenseProjection(TensorSource src, string prefix, int inFeatures, int outFeatures) : base(nameof(DenseProjection))
    {
        dense = DenseLinear.FromSource(src, prefix + ".dense", inFeatures, outFeatures, WeightLayout.OutIn, hasBias: true);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => dense.call(x);

    public override LinearMap GetProjection(string localName) =>
        localName == "dense" ? dense : throw new ArgumentException($"no projection '{localName}' in {GetName()}");

    public override void SetProjection(string localName, LinearMap map)
    {
        if (localName != "dense") throw new ArgumentException($"no projection '{localName}' in {GetName()}");
        dense = Swap(localName, dense, map);
    }
}

/// <summary>
/// A Hugging Face model rebuilt in TorchSharp with module names equal to the checkpoint keys, so that
/// every parameter is addressable by its Hugging Face name.
/// </summary>
public abstract class PretrainedModel : Module<Tensor, Tensor>
{
    public ModelConfig Config { get; }

    /// <summary>What this model's architecture declares: layer prefixes, sites, default sharing, tying, task.</summary>
    public Architecture Architecture => Config.Architecture;

    public ModelTask Task => Architecture.Task;

    /// <summary>Module path of layer <c>i</c>, e.g. "transformer.h.3".</summary>
    public string LayerPrefix(int layer) => Architecture.LayerPrefix(layer);

    /// <summary>Projection types inside each layer, in the order a layer applies them.</summary>
    public IReadOnlyList<string> ProjectionTypes => Architecture.ProjectionTypes;

    protected PretrainedModel(string name, ModelConfig config) : base(name) => Config = config;

    /// <summary>
    /// Windows per forward pass: as many as keep the logits under 16 MB. Larger tensors exceed glibc's
    /// mmap threshold and are page-faulted in afresh on every pass (measured on GPT-2: 1.6× slower at 8 windows than at 2).
    /// </summary>
    public int DefaultBatchSize(int windowLength) => DefaultBatchSize(Config, windowLength, DType);

    /// <summary>The same for a model of <paramref name="config"/> whose logits are <paramref name="dtype"/> (another runtime's).</summary>
    public static int DefaultBatchSize(ModelConfig config, int windowLength, ScalarType dtype)
    {
        long vocab = config is ICausalLanguageModelConfig lm ? lm.VocabSize : 1;
        long bytes = windowLength * vocab * dtype.ElementSize();
        return (int)Math.Clamp((16L << 20) / Math.Max(1, bytes), 1, 64);
    }

    public IReadOnlyList<ProjectionSite> Sites => _sites ??= BuildSites();
    private IReadOnlyList<ProjectionSite>? _sites;

    private List<ProjectionSite> BuildSites()
    {
        var sites = new List<ProjectionSite>();
        foreach (var type in ProjectionTypes)
            for (int l = 0; l < Config.NumLayers; l++)
            {
                string name = $"{LayerPrefix(l)}.{type}";
                var p = GetProjection(name);
                sites.Add(new ProjectionSite(name, type, l, p.InFeatures, p.OutFeatures));
            }
        return sites;
    }

    public ProjectionSite Site(string type, int layer) =>
        Sites.FirstOrDefault(s => s.Type == type && s.Layer == layer) ?? throw new ArgumentException($"no projection '{type}' in layer {layer}");

    public LinearMap GetProjection(string name)
    {
        var (owner, local) = Owner(name);
        return owner.GetProjection(local);
    }

    public LinearMap GetProjection(ProjectionSite site) => GetProjection(site.Name);

    public void SetProjection(ProjectionSite site, LinearMap map)
    {
        var (owner, local) = Owner(site.Name);
        owner.SetProjection(local, map);
    }

    private (ProjectionOwner Owner, string Local) Owner(string name)
    {
        int dot = name.LastIndexOf('.');
        var parent = dot < 0 ? this : FindModule(name[..dot]);
        if (parent is not ProjectionOwner owner) throw new ArgumentException($"'{name}' is not a shareable projection");
        return (owner, name[(dot + 1)..]);
    }

    /// <summary>The submodule at a dotted path, e.g. "model.layers.3.self_attn".</summary>
    public Module FindModule(string path)
    {
        Module current = this;
        foreach (var part in path.Split('.'))
        {
            var next = current.named_children().FirstOrDefault(c => c.name == part).module;
            current = next ?? throw new ArgumentException($"no module '{path}' (stopped at '{part}')");
        }
        return current;
    }

    /// <summary>Parameters by Hugging Face name; a tensor shared by several modules appears under each name.</summary>
    public IReadOnlyDictionary<string, Parameter> ParametersByName() =>
        named_parameters().ToDictionary(p => p.name, p => p.parameter);

    /// <summary>Distinct parameter tensors (shared ones counted once) with the first name each is reachable by.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> UniqueParameters()
    {
        var seen = new HashSet<IntPtr>();
        var list = new List<(string, Parameter)>();
        foreach (var (name, p) in named_parameters().OrderBy(p => p.name, StringComparer.Ordinal))
            if (seen.Add(TensorStorage.Pointer(p)))
                list.Add((name, p));
        return list;
    }

    /// <summary>Number of stored parameters, each shared tensor counted once.</summary>
    public long ParameterCount() => UniqueParameters().Sum(p => p.Parameter.numel());

    public long ParameterBytes() => UniqueParameters().Sum(p => p.Parameter.numel() * p.Parameter.element_size());

    public ScalarType DType => named_parameters().First().parameter.dtype;

    /// <summary>
    /// The dtype of the checkpoint this model was loaded from (Float16 for an F16 file computed in float32); null for a
    /// model built from random tensors. Saving a compressed copy keeps it unless told otherwise.
    /// </summary>
    public ScalarType? CheckpointDType { get; set; }
}
