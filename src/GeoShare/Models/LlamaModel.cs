using System.Globalization;
using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

#pragma warning disable IDE1006 // field names are the checkpoint's module names

/// <summary>LLaMA: checkpoint layout, layer sites, default sharing and tying, declared once.</summary>
public sealed class LlamaArchitecture : LlamaFamilyArchitecture<LlamaConfig>
{
    public static LlamaArchitecture Instance { get; } = new();
    private LlamaArchitecture() { }

    public override string ModelType => "llama";
    protected override string ModelClass => "LlamaForCausalLM";
    internal override LlamaConfig Parse(ConfigReader r) => LlamaConfig.From(r);
}

/// <summary>
/// LLaMA (LlamaForCausalLM): RMSNorm, rotary positions, grouped-query attention, SwiGLU. Honoured: head_dim,
/// attention_bias (q, k, v and o), mlp_bias, tie_word_embeddings, rms_norm_eps, the rope fields
/// (<see cref="RotaryParameters.Parse"/>); hidden_act other than silu and partial rotary embeddings are refused.
/// </summary>
public sealed record LlamaConfig(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, RotaryParameters Rope, bool TieWordEmbeddings, bool AttentionBias, bool MlpBias,
    int MaxPositionEmbeddings) : LlamaFamilyConfig, ICausalLanguageModelConfig
{
    public override Architecture Architecture => LlamaArchitecture.Instance;
    public override int MaxPositionEmbeddings { get; init; } = MaxPositionEmbeddings;

    /// <summary>Rotary positions have no table to run past: evaluation does not limit the window (max_position_embeddings is advisory).</summary>
    public int MaxPositions => int.MaxValue;

    public override LlamaDecoderSpec Decoder => new(VocabSize, Hidden, IntermediateSize, Layers, NumAttentionHeads, NumKeyValueHeads,
        HeadDim, RmsNormEps, Rope, TieWordEmbeddings, QkvBias: AttentionBias, OutputBias: AttentionBias, MlpBias: MlpBias,
        QkNorm: false, SlidingWindow: null);

    internal static LlamaConfig From(ConfigReader r)
    {
        var f = LlamaFamilyFields.Read(r, defaultKvHeads: null, defaultHeadDim: null);
        var c = new LlamaConfig(f.VocabSize, f.Hidden, f.IntermediateSize, f.Layers, f.Heads, f.KvHeads, f.HeadDim, f.RmsNormEps,
            f.Rope, f.TieWordEmbeddings, r.OptionalBool("attention_bias") ?? false, r.OptionalBool("mlp_bias") ?? false,
            r.OptionalInt("max_position_embeddings") ?? 2048);
        return c;
    }
}

/// <summary>
/// The config of a LLaMA-style decoder (llama, mistral, qwen2, qwen3): what each family's config.json fields make
/// of the shared blocks below. Each family's record is declared in its own file.
/// </summary>
public abstract record LlamaFamilyConfig : ModelConfig
{
    /// <summary>The decoder this config describes.</summary>
    public abstract LlamaDecoderSpec Decoder { get; }

    /// <summary>
    /// config.json's max_position_embeddings (absent: the family's transformers default). Advisory for evaluation
    /// (rotary positions have no table to run past), and for the ONNX export, which computes the rotary tables in its
    /// graph for any length; kept as the config's information.
    /// </summary>
    public abstract int MaxPositionEmbeddings { get; init; }

    public override int NumLayers => Decoder.Layers;
    public override int HiddenSize => Decoder.Hidden;
}

/// <summary>
/// What a LLaMA-style decoder computes. <paramref name="QkvBias"/>/<paramref name="OutputBias"/>: biases on q/k/v and
/// on o; <paramref name="QkNorm"/>: per-head RMSNorm (q_norm, k_norm over head_dim) on q and k before the rotation;
/// <paramref name="SlidingWindow"/>: position i attends to j with 0 ≤ i − j &lt; window (null: every earlier position).
/// </summary>
public sealed record LlamaDecoderSpec(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int Heads, int KvHeads, int HeadDim, double RmsNormEps,
    RotaryParameters Rope, bool TieWordEmbeddings, bool QkvBias, bool OutputBias, bool MlpBias, bool QkNorm, int? SlidingWindow);

/// <summary>The layout every LLaMA-style family shares: module names, sites, sharing defaults, tying; each family adds its model_type and parsing.</summary>
public abstract class LlamaFamilyArchitecture<TConfig> : Architecture<TConfig> where TConfig : LlamaFamilyConfig
{
    public override ModelTask Task => ModelTask.CausalLanguageModel;
    public sealed override string LayerPrefix(int layer) => $"model.layers.{layer}";
    public override IReadOnlyList<string> ProjectionTypes { get; } =
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    /// <summary>Basis Sharing's finding on LLaMA: Q, K, V, Gate and Up gain from sharing while O and Down lose.</summary>
    public override IReadOnlyList<string> DefaultSharedTypes { get; } =
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"];

    public override IReadOnlyDictionary<string, string> TiedKeys(ModelConfig config) =>
        ((TConfig)config).Decoder.TieWordEmbeddings
            ? new Dictionary<string, string> { [LlamaFamilyLayout.HeadPrefix + ".weight"] = LlamaFamilyLayout.EmbeddingPrefix + ".weight" }
            : NoTiedKeys;

    /// <summary>Older checkpoints store the rotary frequencies; the model computes them.</summary>
    public override IReadOnlyList<string> IgnoredSuffixes { get; } = [".rotary_emb.inv_freq"];

    /// <summary>The Hugging Face class, e.g. "MistralForCausalLM" (the model's module name).</summary>
    protected abstract string ModelClass { get; }

    protected sealed override PretrainedModel Build(TConfig config, TensorSource src) => new LlamaForCausalLM(ModelClass, config, src);

    protected sealed override Func<ModelConfig, TensorSource, int, DecoderLayer> LayerBuilder =>
        (config, src, i) => new LlamaDecoderLayer(((TConfig)config).Decoder, src, LayerPrefix(i));
}

/// <summary>Checkpoint key prefixes of the LLaMA-style families.</summary>
public static class LlamaFamilyLayout
{
    public const string EmbeddingPrefix = "model.embed_tokens";
    public const string HeadPrefix = "lm_head";
}

/// <summary>The config.json fields every LLaMA-style family reads alike.</summary>
internal sealed record LlamaFamilyFields(int VocabSize, int Hidden, int IntermediateSize, int Layers, int Heads, int KvHeads,
    int HeadDim, double RmsNormEps, RotaryParameters Rope, bool TieWordEmbeddings)
{
    /// <param name="defaultKvHeads">num_key_value_heads when absent; null: num_attention_heads (llama), for families whose
    /// transformers default is a fixed count the field is required instead.</param>
    /// <param name="defaultHeadDim">head_dim when absent; null: hidden_size / num_attention_heads.</param>
    public static LlamaFamilyFields Read(ConfigReader r, int? defaultKvHeads, int? defaultHeadDim, bool kvHeadsRequired = false)
    {
        int hidden = r.Int("hidden_size");
        int heads = r.Int("num_attention_heads");
        int kvHeads = kvHeadsRequired ? r.Int("num_key_value_heads") : r.OptionalInt("num_key_value_heads") ?? defaultKvHeads ?? heads;
        string act = r.OptionalString("hidden_act") ?? "silu";
        r.Require(act == "silu", $"field 'hidden_act' is '{act}' (supported: silu)");
        var f = new LlamaFamilyFields(r.Int("vocab_size"), hidden, r.Int("intermediate_size"), r.Int("num_hidden_layers"), heads, kvHeads,
            r.OptionalInt("head_dim") ?? defaultHeadDim ?? hidden / heads, r.OptionalPositive("rms_norm_eps") ?? 1e-6,
            RotaryParameters.Parse(r), r.OptionalBool("tie_word_embeddings") ?? false);
        r.Require(f.Heads % f.KvHeads == 0, "num_attention_heads must be a multiple of num_key_value_heads");
        r.Require(f.HeadDim % 2 == 0, "head_dim must be even for rotary embeddings");
        r.Require(f.RmsNormEps > 0, "field 'rms_norm_eps' must be positive");
        return f;
    }

    /// <summary>Qwen-style sliding-window fields: use_sliding_window true, or a layer_types entry other than full_attention, is refused.</summary>
    public static void RefuseQwenSlidingWindow(ConfigReader r)
    {
        if (r.OptionalBool("use_sliding_window") == true)
            throw r.Error("field 'use_sliding_window' is true: sliding-window layers (max_window_layers) are not supported");
        var types = r.OptionalStrings("layer_types");
        if (types is null) return;
        int i = types.ToList().FindIndex(t => t != "full_attention");
        if (i >= 0) throw r.Error($"field 'layer_types[{i}]' is '{types[i]}' (supported: full_attention)");
    }
}

/// <summary>
/// Rotary position parameters, as transformers' <c>ROPE_INIT_FUNCTIONS</c> compute them for the rope types
/// "default", "linear" (positions interpolated: every inverse frequency divided by factor) and "llama3" (Llama 3.1's
/// wavelength-dependent interpolation). <paramref name="OriginalMaxPositionEmbeddings"/> is llama3's original context.
/// </summary>
public sealed record RotaryParameters(double Theta, string Type = RotaryParameters.DefaultType, double Factor = 1.0,
    double LowFreqFactor = 1.0, double HighFreqFactor = 4.0, double OriginalMaxPositionEmbeddings = 8192)
{
    public const string DefaultType = "default", LinearType = "linear", Llama3Type = "llama3";
    public static IReadOnlyList<string> SupportedTypes { get; } = [DefaultType, LinearType, Llama3Type];

    /// <summary>inv_freq [headDim/2], float32, with transformers' operations in transformers' order.</summary>
    public Tensor InverseFrequencies(int headDim)
    {
        var invFreq = Scalars.Pow(Theta, Scalars.Arange(0, headDim, 2, ScalarType.Int64).to_type(ScalarType.Float32).DivScalar(headDim)).reciprocal();
        if (Type == LinearType) return invFreq.DivScalar(Factor);
        if (Type != Llama3Type) return invFreq;
        using var scope = torch.NewDisposeScope();
        double lowFreqWavelen = OriginalMaxPositionEmbeddings / LowFreqFactor, highFreqWavelen = OriginalMaxPositionEmbeddings / HighFreqFactor;
        using var low = lowFreqWavelen.ToScalar();
        using var high = highFreqWavelen.ToScalar();
        var wavelen = invFreq.reciprocal().MulScalar(2 * Math.PI);  // 2π / inv_freq, as Python's scalar / tensor computes it
        // Long wavelengths are divided by factor, short ones kept, the band between interpolated smoothly.
        var llama = torch.where(wavelen.gt(low), invFreq.DivScalar(Factor), invFreq);
        var smooth = wavelen.reciprocal().MulScalar(OriginalMaxPositionEmbeddings).AddScalar(-LowFreqFactor).DivScalar(HighFreqFactor - LowFreqFactor);
        var smoothed = smooth.neg().AddScalar(1.0).mul(llama).DivScalar(Factor).add(smooth.mul(llama), Scalars.One);
        var medium = wavelen.lt(high).logical_not().logical_and(wavelen.gt(low).logical_not());
        return torch.where(medium, smoothed, llama).MoveToOuterDisposeScope();
    }

    private static readonly string[] Sections = ["rope_parameters", "rope_scaling"];

    /// <summary>
    /// The rope fields of a config.json: rope_scaling (transformers 4.x; its rope type under rope_type or the legacy
    /// type), rope_parameters (transformers 5; rope_theta inside), rope_theta at the top level. A key written in
    /// several places must agree; a rope type other than default, linear and llama3, a key the type does not use, a
    /// missing parameter or partial_rotary_factor ≠ 1 is refused with the field named.
    /// </summary>
    internal static RotaryParameters Parse(ConfigReader r)
    {
        var keys = new Dictionary<string, (JsonElement Value, string Field)>();
        void Add(string key, JsonElement value, string field)
        {
            if (value.ValueKind == JsonValueKind.Null) return;
            // Every numeric rope parameter is a positive finite number; checked where read, before any conflict.
            if (value.ValueKind == JsonValueKind.Number && !(value.TryGetDouble(out double d) && double.IsFinite(d) && d > 0))
                throw r.Error($"field '{field}' must be positive, got {value.GetRawText()}");
            if (keys.TryGetValue(key, out var prior) && !SameValue(prior.Value, value))
                throw r.Error($"field '{field}' ({value.GetRawText()}) conflicts with '{prior.Field}' ({prior.Value.GetRawText()})");
            keys[key] = (value, field);
        }
        foreach (var section in Sections)
            if (r.OptionalObject(section) is { } obj)
                foreach (var p in obj.EnumerateObject())
                    Add(p.Name == "type" ? "rope_type" : p.Name, p.Value, $"{section}.{p.Name}"); // "type": the legacy name of rope_type
        foreach (var top in new[] { "rope_theta", "partial_rotary_factor" })
            if (r.Root.TryGetProperty(top, out var v)) Add(top, v, top);

        string type = DefaultType;
        if (keys.TryGetValue("rope_type", out var t))
        {
            if (t.Value.ValueKind != JsonValueKind.String) throw r.Error($"field '{t.Field}' must be a string");
            type = t.Value.GetString()!;
            if (!SupportedTypes.Contains(type))
                throw r.Error($"field '{t.Field}' is '{type}': this rope type is not supported (supported: {string.Join(", ", SupportedTypes)})");
        }
        string[] used = type switch
        {
            LinearType => ["factor"],
            Llama3Type => ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
            _ => [],
        };
        foreach (var (key, (_, field)) in keys)
            if (key is not ("rope_type" or "rope_theta" or "partial_rotary_factor") && !used.Contains(key))
                throw r.Error($"field '{field}' is not used by rope type '{type}' (refused rather than ignored)");

        // A missing parameter is named in the section that gave the rope type.
        string typeSection = keys.TryGetValue("rope_type", out var typed) && typed.Field.Contains('.') ? typed.Field[..typed.Field.IndexOf('.')] : Sections[1];
        double Number(string key, double? fallback = null)
        {
            if (!keys.TryGetValue(key, out var e))
                return fallback ?? throw r.Error($"field '{typeSection}.{key}' is missing: rope type '{type}' needs it");
            if (e.Value.ValueKind != JsonValueKind.Number || !double.IsFinite(e.Value.GetDouble()) || e.Value.GetDouble() <= 0)
                throw r.Error($"field '{e.Field}' must be a positive number");
            return e.Value.GetDouble();
        }
        if (Number("partial_rotary_factor", 1.0) != 1.0)
            throw r.Error($"field '{keys["partial_rotary_factor"].Field}' is {keys["partial_rotary_factor"].Value.GetRawText()}: partial rotary embeddings are not supported");
        double theta = Number("rope_theta", 10000.0);
        var rope = type switch
        {
            LinearType => new RotaryParameters(theta, type, Number("factor")),
            Llama3Type => new RotaryParameters(theta, type, Number("factor"), Number("low_freq_factor"), Number("high_freq_factor"),
                Number("original_max_position_embeddings")),
            _ => new RotaryParameters(theta),
        };
        if (rope.Type == Llama3Type && rope.HighFreqFactor <= rope.LowFreqFactor)
            throw r.Error($"field '{keys["high_freq_factor"].Field}' must be greater than low_freq_factor ({rope.LowFreqFactor.ToString(CultureInfo.InvariantCulture)})");
        return rope;
    }

    private static bool SameValue(JsonElement a, JsonElement b) =>
        a.ValueKind == JsonValueKind.Number && b.ValueKind == JsonValueKind.Number ? a.GetDouble() == b.GetDouble()
        : a.ValueKind == JsonValueKind.String && b.ValueKind == JsonValueKind.String ? a.GetString() == b.GetString()
        : a.GetRawText() == b.GetRawText();
}

/// <summary>A LLaMA-style causal LM: model.{embed_tokens, layers.N, norm} and lm_head (tied to embed_tokens or its own).</summary>
public sealed class LlamaForCausalLM : PretrainedModel, ILayeredModel
{
    private readonly LlamaModel model;
    private readonly DenseLinear lm_head;

    public LlamaForCausalLM(LlamaConfig config, TensorSource src) : this(nameof(LlamaForCausalLM), config, src) { }

    internal LlamaForCausalLM(string name, LlamaFamilyConfig config, TensorSource src) : base(name, config)
    {
        var spec = config.Decoder;
        model = new LlamaModel(spec, config.Architecture, src);
        lm_head = spec.TieWordEmbeddings
            ? new DenseLinear(model.embed_tokens.Weight, null, WeightLayout.OutIn)
            : DenseLinear.FromSource(src, LlamaFamilyLayout.HeadPrefix, spec.Hidden, spec.VocabSize, WeightLayout.OutIn, hasBias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        var (x, context) = Embed(ids);
        for (int i = 0; i < Config.NumLayers; i++) x = Layer(i).Forward(x, context);
        return Head(x);
    }

    public (Tensor Hidden, LayerContext Context) Embed(Tensor ids) => model.Embed(ids);

    public DecoderLayer Layer(int index) => model.layers[index];

    public Tensor Head(Tensor hidden) => lm_head.call(model.norm.call(hidden));
}

public sealed class LlamaModel : Module<Tensor, Tensor>
{
    internal readonly TokenEmbedding embed_tokens;
    internal readonly ModuleList<LlamaDecoderLayer> layers;
    internal readonly RmsNorm norm;
    private readonly RotaryEmbedding _rotary;

    public LlamaModel(LlamaDecoderSpec s, Architecture architecture, TensorSource src) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(src, LlamaFamilyLayout.EmbeddingPrefix, s.VocabSize, s.Hidden);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, s.Layers).Select(i => new LlamaDecoderLayer(s, src, architecture.LayerPrefix(i))).ToArray());
        norm = new RmsNorm(src, "model.norm", s.Hidden, s.RmsNormEps);
        _rotary = new RotaryEmbedding(s.HeadDim, s.Rope);
        RegisterComponents();
    }

    /// <summary>The token embeddings and the rotary cos/sin every layer of this batch reads.</summary>
    public (Tensor Hidden, LayerContext Context) Embed(Tensor ids)
    {
        var x = embed_tokens.call(ids);
        var (cos, sin) = _rotary.CosSin(ids.shape[1], x.dtype, x.device);
        return (x, new LayerContext(cos, sin));
    }

    public override Tensor forward(Tensor ids)
    {
        var (x, context) = Embed(ids);
        foreach (var layer in layers) x = layer.Forward(x, context);
        return norm.call(x);
    }
}

/// <summary>Rotary position embedding with Hugging Face's half-split rotation (rotate_half).</summary>
public sealed class RotaryEmbedding(int headDim, RotaryParameters rope)
{
    public RotaryEmbedding(int headDim, double theta) : this(headDim, new RotaryParameters(theta)) { }

    public (Tensor Cos, Tensor Sin) CosSin(long length, ScalarType dtype, Device device)
    {
        // inv_freq in float32 then positions × inv_freq, as transformers computes them.
        using var invFreq = rope.InverseFrequencies(headDim);
        using var pos = Scalars.Arange(length, ScalarType.Int64).to_type(ScalarType.Float32);
        using var freqs = torch.outer(pos, invFreq);
        using var emb = torch.cat([freqs, freqs], -1);
        return (emb.cos().to_type(dtype).to(device), emb.sin().to_type(dtype).to(device));
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long half = x.shape[^1] / 2;
        var rotated = torch.cat([x[TensorIndex.Ellipsis, TensorIndex.Slice(half)].neg(), x[TensorIndex.Ellipsis, TensorIndex.Slice(0, half)]], -1);
        return x.mul(cos).add(rotated.mul(sin), Scalars.One);
    }
}

public sealed class LlamaDecoderLayer : DecoderLayer
{
    private readonly LlamaAttention self_attn;
    private readonly LlamaMlp mlp;
    private readonly RmsNorm input_layernorm;
    private readonly RmsNorm post_attention_layernorm;

    public LlamaDecoderLayer(LlamaDecoderSpec s, TensorSource src, string prefix) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(s, src, prefix + ".self_attn");
        mlp = new LlamaMlp(s, src, prefix + ".mlp");
        input_layernorm = new RmsNorm(src, prefix + ".input_layernorm", s.Hidden, s.RmsNormEps);
        post_attention_layernorm = new RmsNorm(src, prefix + ".post_attention_layernorm", s.Hidden, s.RmsNormEps);
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, LayerContext context)
    {
        using var scope = torch.NewDisposeScope();
        x = x.add(self_attn.forward(input_layernorm.call(x), context.Cos!, context.Sin!), Scalars.One);
        return x.add(mlp.call(post_attention_layernorm.call(x)), Scalars.One).MoveToOuterDisposeScope();
    }
}

public sealed class LlamaAttention : ProjectionOwner
{
    private LinearMap q_proj, k_proj, v_proj, o_proj;
    private readonly RmsNorm? q_norm, k_norm;
    private readonly int _heads, _kvHeads, _headDim;
    private readonly int? _window;

    public LlamaAttention(LlamaDecoderSpec s, TensorSource src, string prefix) : base(nameof(LlamaAttention))
    {
        _heads = s.Heads;
        _kvHeads = s.KvHeads;
        _headDim = s.HeadDim;
        _window = s.SlidingWindow;
        q_proj = DenseLinear.FromSource(src, prefix + ".q_proj", s.Hidden, _heads * _headDim, WeightLayout.OutIn, s.QkvBias);
        k_proj = DenseLinear.FromSource(src, prefix + ".k_proj", s.Hidden, _kvHeads * _headDim, WeightLayout.OutIn, s.QkvBias);
        v_proj = DenseLinear.FromSource(src, prefix + ".v_proj", s.Hidden, _kvHeads * _headDim, WeightLayout.OutIn, s.QkvBias);
        o_proj = DenseLinear.FromSource(src, prefix + ".o_proj", _heads * _headDim, s.Hidden, WeightLayout.OutIn, s.OutputBias);
        if (s.QkNorm)
        {
            q_norm = new RmsNorm(src, prefix + ".q_norm", _headDim, s.RmsNormEps);
            k_norm = new RmsNorm(src, prefix + ".k_norm", _headDim, s.RmsNormEps);
        }
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin)
    {
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.call(x).view(b, t, _heads, _headDim);
        var k = k_proj.call(x).view(b, t, _kvHeads, _headDim);
        if (q_norm is not null) q = q_norm.call(q); // Qwen3: each head normalised over head_dim, before the rotation
        if (k_norm is not null) k = k_norm.call(k);
        q = q.transpose(1, 2);
        k = k.transpose(1, 2);
        var v = v_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = RotaryEmbedding.Apply(q, cos, sin);
        k = RotaryEmbedding.Apply(k, cos, sin);
        int groups = _heads / _kvHeads;
        if (groups > 1)
        {
            // Query head h reads key/value head h / groups (transformers' repeat_kv).
            k = k.repeat_interleave(groups, dim: 1);
            v = v.repeat_interleave(groups, dim: 1);
        }
        var y = Attention.Compute(q, k, v, causal: true, window: _window);
        return o_proj.call(y.transpose(1, 2).reshape(b, t, _heads * _headDim));
    }

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "q_proj" => q_proj,
        "k_proj" => k_proj,
        "v_proj" => v_proj,
        "o_proj" => o_proj,
        _ => throw new ArgumentException($"no projection '{localName}' in LLaMA attention"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "q_proj": q_proj = Swap(localName, q_proj, map); break;
            case "k_proj": k_proj = Swap(localName, k_proj, map); break;
            case "v_proj": v_proj = Swap(localName, v_proj, map); break;
            case "o_proj": o_proj = Swap(localName, o_proj, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in LLaMA attention");
        }
    }
}

public sealed class LlamaMlp : ProjectionOwner
{
    private LinearMap gate_proj, up_proj, down_proj;

    public LlamaMlp(LlamaDecoderSpec s, TensorSource src, string prefix) : base(nameof(LlamaMlp))
    {
        gate_proj = DenseLinear.FromSource(src, prefix + ".gate_proj", s.Hidden, s.IntermediateSize, WeightLayout.OutIn, s.MlpBias);
        up_proj = DenseLinear.FromSource(src, prefix + ".up_proj", s.Hidden, s.IntermediateSize, WeightLayout.OutIn, s.MlpBias);
        down_proj = DenseLinear.FromSource(src, prefix + ".down_proj", s.IntermediateSize, s.Hidden, WeightLayout.OutIn, s.MlpBias);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        down_proj.call(functional.silu(gate_proj.call(x)).mul(up_proj.call(x)));

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "gate_proj" => gate_proj,
        "up_proj" => up_proj,
        "down_proj" => down_proj,
        _ => throw new ArgumentException($"no projection '{localName}' in LLaMA MLP"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "gate_proj": gate_proj = Swap(localName, gate_proj, map); break;
            case "up_proj": up_proj = Swap(localName, up_proj, map); break;
            case "down_proj": down_proj = Swap(localName, down_proj, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in LLaMA MLP");
        }
    }
}
