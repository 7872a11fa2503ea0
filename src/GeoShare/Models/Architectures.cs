namespace GeoShare.Models;

/// <summary>
/// Everything the library knows about one architecture, declared by that architecture's own file: the
/// model_type of its config.json, how the config parses, how the model is built, its checkpoint layout
/// (layer prefix, tied keys, buffers to ignore), its layer sites, which matrix types share by default, and
/// its task. Code outside Models asks the architecture; it never switches on the model type.
/// </summary>
public abstract class Architecture
{
    /// <summary>config.json's model_type, e.g. "gpt2".</summary>
    public abstract string ModelType { get; }

    public abstract ModelTask Task { get; }

    /// <summary>The config record this architecture parses into.</summary>
    public abstract Type ConfigType { get; }

    /// <summary>Module path (checkpoint key prefix) of layer <c>i</c>, e.g. "transformer.h.3".</summary>
    public abstract string LayerPrefix(int layer);

    /// <summary>Projection types inside each layer, in the order a layer applies them.</summary>
    public abstract IReadOnlyList<string> ProjectionTypes { get; }

    /// <summary>Projection types that share across layers by default (the rest are compressed per layer).</summary>
    public abstract IReadOnlyList<string> DefaultSharedTypes { get; }

    /// <summary>Checkpoint keys the config ties to another key (tied key → the key it reads), e.g. lm_head.weight → the embedding.</summary>
    public virtual IReadOnlyDictionary<string, string> TiedKeys(ModelConfig config) => NoTiedKeys;

    /// <summary>Suffixes of buffers that checkpoints carry and this model computes instead.</summary>
    public virtual IReadOnlyList<string> IgnoredSuffixes => [];

    protected static readonly IReadOnlyDictionary<string, string> NoTiedKeys = new Dictionary<string, string>();

    internal abstract ModelConfig ParseConfig(ConfigReader r);

    /// <summary>Whether the model runs layer by layer (<see cref="ILayeredModel"/>, <see cref="LayerStream"/>).</summary>
    public bool StreamsLayers => LayerBuilder is not null;

    /// <summary>Builds layer <c>i</c> alone from a tensor source (the same constructor the whole model uses); null: no layer-wise path.</summary>
    protected virtual Func<ModelConfig, TensorSource, int, DecoderLayer>? LayerBuilder => null;

    public DecoderLayer BuildLayer(ModelConfig config, TensorSource src, int layer) =>
        (LayerBuilder ?? throw new UsageException("streaming", $"a {ModelType} model has no layer-wise path"))(config, src, layer);

    /// <summary>Builds the model; callers go through <see cref="ModelLoader.Build"/>, which also puts it in eval mode.</summary>
    internal abstract PretrainedModel Construct(ModelConfig config, TensorSource src);

    public override string ToString() => ModelType;
}

/// <summary>An architecture whose config record is <typeparamref name="TConfig"/>.</summary>
public abstract class Architecture<TConfig> : Architecture where TConfig : ModelConfig
{
    public sealed override Type ConfigType => typeof(TConfig);

    internal sealed override ModelConfig ParseConfig(ConfigReader r) => Parse(r);

    internal sealed override PretrainedModel Construct(ModelConfig config, TensorSource src) =>
        Build(config as TConfig ?? throw new ArgumentException($"{ModelType} builds from a {typeof(TConfig).Name}, not a {config.GetType().Name}"), src);

    internal abstract TConfig Parse(ConfigReader r);

    protected abstract PretrainedModel Build(TConfig config, TensorSource src);
}

/// <summary>The registry: every architecture the library loads. Adding one is its file and one line here.</summary>
public static class Architectures
{
    public static IReadOnlyList<Architecture> All { get; } =
    [
        Gpt2Architecture.Instance,
        LlamaArchitecture.Instance,
        VitArchitecture.Instance,
        MistralArchitecture.Instance,
        Qwen2Architecture.Instance,
        Qwen3Architecture.Instance,
        BertArchitecture.Instance,
    ];

    public static IReadOnlyList<string> ModelTypes => All.Select(a => a.ModelType).ToList();

    /// <summary>The model types that run layer by layer (<see cref="LayerStream"/>), for messages.</summary>
    public static string LayeredTypes => string.Join(", ", All.Where(a => a.StreamsLayers).Select(a => a.ModelType));

    /// <summary>The architecture of <paramref name="modelType"/>, or null when none is registered.</summary>
    public static Architecture? Find(string modelType) => All.FirstOrDefault(a => a.ModelType == modelType);
}

/// <summary>What evaluating a causal language model needs from its config.</summary>
public interface ICausalLanguageModelConfig
{
    int VocabSize { get; }

    /// <summary>The longest window the model's positions allow.</summary>
    int MaxPositions { get; }
}

/// <summary>What evaluating an image classifier needs from its config.</summary>
public interface IImageClassifierConfig
{
    /// <summary>Height and width of the (square) input image.</summary>
    int ImageSize { get; }
    int NumChannels { get; }
    int NumLabels { get; }
}
