using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

#pragma warning disable IDE1006 // field names are the checkpoint's module names

/// <summary>LLaMA: checkpoint layout, layer sites, default sharing and tying, declared once.</summary>
public sealed class LlamaArchitecture : Architecture<LlamaConfig>
{
    public static LlamaArchitecture Instance { get; } = new();
    private LlamaArchitecture() { }

    public const string EmbeddingPrefix = "model.embed_tokens";
    public const string HeadPrefix = "lm_head";

    public override string ModelType => "llama";
    public override ModelTask Task => ModelTask.CausalLanguageModel;
    public override string LayerPrefix(int layer) => $"model.layers.{layer}";
    public override IReadOnlyList<string> ProjectionTypes { get; } =
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];

    /// <summary>Basis Sharing's finding on LLaMA: Q, K, V, Gate and Up gain from sharing while O and Down lose.</summary>
    public override IReadOnlyList<string> DefaultSharedTypes { get; } =
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"];

    public override IReadOnlyDictionary<string, string> TiedKeys(ModelConfig config) =>
        ((LlamaConfig)config).TieWordEmbeddings ? new Dictionary<string, string> { [HeadPrefix + ".weight"] = EmbeddingPrefix + ".weight" } : NoTiedKeys;

    /// <summary>Older checkpoints store the rotary frequencies; the model computes them.</summary>
    public override IReadOnlyList<string> IgnoredSuffixes { get; } = [".rotary_emb.inv_freq"];

    internal override LlamaConfig Parse(ConfigReader r) => LlamaConfig.From(r);
    protected override PretrainedModel Build(LlamaConfig config, TensorSource src) => new LlamaForCausalLM(config, src);
}

/// <summary>LLaMA (LlamaForCausalLM): RMSNorm, rotary positions, grouped-query attention, SwiGLU.</summary>
public sealed record LlamaConfig(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, double RopeTheta, bool TieWordEmbeddings, bool AttentionBias, bool MlpBias,
    int MaxPositionEmbeddings) : ModelConfig, ICausalLanguageModelConfig
{
    public override Architecture Architecture => LlamaArchitecture.Instance;

    /// <summary>Rotary positions have no table to run past: evaluation does not limit the window (max_position_embeddings is advisory).</summary>
    public int MaxPositions => int.MaxValue;
    public override int NumLayers => Layers;
    public override int HiddenSize => Hidden;

    internal static LlamaConfig From(ConfigReader r)
    {
        int hidden = r.Int("hidden_size");
        int heads = r.Int("num_attention_heads");
        // rope_theta sits at the top level in older configs and inside rope_parameters in newer ones.
        double? theta = r.OptionalPositive("rope_theta");
        string ropeType = "default";
        if (r.Root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object)
        {
            if (rp.TryGetProperty("rope_theta", out var t) && t.ValueKind == JsonValueKind.Number && t.TryGetDouble(out double tv)) theta ??= tv;
            if (rp.TryGetProperty("rope_type", out var rt) && rt.ValueKind == JsonValueKind.String) ropeType = rt.GetString()!;
        }
        if (r.Root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object
            && rs.TryGetProperty("rope_type", out var rst) && rst.ValueKind == JsonValueKind.String)
            ropeType = rst.GetString()!;
        r.Require(theta is null || (theta > 0 && double.IsFinite(theta.Value)), $"field 'rope_parameters.rope_theta' must be positive, got {theta}");
        r.Require(ropeType == "default", $"unsupported rope_type '{ropeType}' (supported: default)");
        string act = r.OptionalString("hidden_act") ?? "silu";
        r.Require(act == "silu", $"unsupported hidden_act '{act}' (supported: silu)");
        var c = new LlamaConfig(
            r.Int("vocab_size"), hidden, r.Int("intermediate_size"), r.Int("num_hidden_layers"), heads,
            r.OptionalInt("num_key_value_heads") ?? heads, r.OptionalInt("head_dim") ?? hidden / heads,
            r.OptionalPositive("rms_norm_eps") ?? 1e-6, theta ?? 10000.0, r.OptionalBool("tie_word_embeddings") ?? false,
            r.OptionalBool("attention_bias") ?? false, r.OptionalBool("mlp_bias") ?? false,
            r.OptionalInt("max_position_embeddings") ?? 2048);
        r.Require(c.NumAttentionHeads % c.NumKeyValueHeads == 0, "num_attention_heads must be a multiple of num_key_value_heads");
        r.Require(c.HeadDim % 2 == 0, "head_dim must be even for rotary embeddings");
        return c;
    }
}

/// <summary>LlamaForCausalLM: model.{embed_tokens, layers.N, norm} and lm_head (tied to embed_tokens or its own).</summary>
public sealed class LlamaForCausalLM : PretrainedModel
{
    private readonly LlamaModel model;
    private readonly DenseLinear lm_head;

    public LlamaForCausalLM(LlamaConfig config, TensorSource src) : base(nameof(LlamaForCausalLM), config)
    {
        model = new LlamaModel(config, src);
        lm_head = config.TieWordEmbeddings
            ? new DenseLinear(model.embed_tokens.Weight, null, WeightLayout.OutIn)
            : DenseLinear.FromSource(src, LlamaArchitecture.HeadPrefix, config.Hidden, config.VocabSize, WeightLayout.OutIn, hasBias: false);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids) => lm_head.call(model.call(ids));

    /// <summary>The rotary cos and sin [length, head_dim] (float32) this model applies at positions 0..length-1 (for the ONNX export).</summary>
    public (Tensor Cos, Tensor Sin) RotaryTables(long length) => model.RotaryTables(length);
}

public sealed class LlamaModel : Module<Tensor, Tensor>
{
    internal readonly TokenEmbedding embed_tokens;
    private readonly ModuleList<LlamaDecoderLayer> layers;
    private readonly RmsNorm norm;
    private readonly RotaryEmbedding _rotary;

    public LlamaModel(LlamaConfig c, TensorSource src) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(src, LlamaArchitecture.EmbeddingPrefix, c.VocabSize, c.Hidden);
        layers = new ModuleList<LlamaDecoderLayer>(Enumerable.Range(0, c.Layers).Select(i => new LlamaDecoderLayer(c, src, c.Architecture.LayerPrefix(i))).ToArray());
        norm = new RmsNorm(src, "model.norm", c.Hidden, c.RmsNormEps);
        _rotary = new RotaryEmbedding(c.HeadDim, c.RopeTheta);
        RegisterComponents();
    }

    internal (Tensor Cos, Tensor Sin) RotaryTables(long length) => _rotary.CosSin(length, ScalarType.Float32, CPU);

    public override Tensor forward(Tensor ids)
    {
        var x = embed_tokens.call(ids);
        var (cos, sin) = _rotary.CosSin(ids.shape[1], x.dtype, x.device);
        foreach (var layer in layers) x = layer.forward(x, cos, sin);
        return norm.call(x);
    }
}

/// <summary>Rotary position embedding with Hugging Face's half-split rotation (rotate_half).</summary>
public sealed class RotaryEmbedding(int headDim, double theta)
{
    public (Tensor Cos, Tensor Sin) CosSin(long length, ScalarType dtype, Device device)
    {
        // inv_freq in float32 then positions × inv_freq, as transformers computes them.
        using var invFreq = Scalars.Pow(theta, Scalars.Arange(0, headDim, 2, ScalarType.Int64).to_type(ScalarType.Float32).DivScalar(headDim)).reciprocal();
        using var pos = Scalars.Arange(length, ScalarType.Int64).to_type(ScalarType.Float32);
        using var freqs = torch.outer(pos, invFreq);
        using var emb = torch.cat([freqs, freqs], -1);
        return (emb.cos().to_type(dtype).to(device), emb.sin().to_type(dtype).to(device));
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long half = x.shape[^1] / 2;
        var rotated = torch.cat([x[TensorIndex.Ellipsis, TensorIndex.Slice(half)].neg(), x[TensorIndex.Ellipsis, TensorIndex.Slice(0, half)]], -1);
        return x.mul(cos).add(rotated.mul(sin));
    }
}

public sealed class LlamaDecoderLayer : Module<Tensor, Tensor>
{
    private readonly LlamaAttention self_attn;
    private readonly LlamaMlp mlp;
    private readonly RmsNorm input_layernorm;
    private readonly RmsNorm post_attention_layernorm;

    public LlamaDecoderLayer(LlamaConfig c, TensorSource src, string prefix) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = new LlamaAttention(c, src, prefix + ".self_attn");
        mlp = new LlamaMlp(c, src, prefix + ".mlp");
        input_layernorm = new RmsNorm(src, prefix + ".input_layernorm", c.Hidden, c.RmsNormEps);
        post_attention_layernorm = new RmsNorm(src, prefix + ".post_attention_layernorm", c.Hidden, c.RmsNormEps);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        x = x.add(self_attn.forward(input_layernorm.call(x), cos, sin));
        return x.add(mlp.call(post_attention_layernorm.call(x))).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("LlamaDecoderLayer needs rotary cos/sin");
}

public sealed class LlamaAttention : ProjectionOwner
{
    private LinearMap q_proj, k_proj, v_proj, o_proj;
    private readonly int _heads, _kvHeads, _headDim;

    public LlamaAttention(LlamaConfig c, TensorSource src, string prefix) : base(nameof(LlamaAttention))
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        q_proj = DenseLinear.FromSource(src, prefix + ".q_proj", c.Hidden, _heads * _headDim, WeightLayout.OutIn, c.AttentionBias);
        k_proj = DenseLinear.FromSource(src, prefix + ".k_proj", c.Hidden, _kvHeads * _headDim, WeightLayout.OutIn, c.AttentionBias);
        v_proj = DenseLinear.FromSource(src, prefix + ".v_proj", c.Hidden, _kvHeads * _headDim, WeightLayout.OutIn, c.AttentionBias);
        o_proj = DenseLinear.FromSource(src, prefix + ".o_proj", _heads * _headDim, c.Hidden, WeightLayout.OutIn, c.AttentionBias);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin)
    {
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var k = k_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
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
        var y = Attention.Compute(q, k, v, causal: true);
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

    public LlamaMlp(LlamaConfig c, TensorSource src, string prefix) : base(nameof(LlamaMlp))
    {
        gate_proj = DenseLinear.FromSource(src, prefix + ".gate_proj", c.Hidden, c.IntermediateSize, WeightLayout.OutIn, c.MlpBias);
        up_proj = DenseLinear.FromSource(src, prefix + ".up_proj", c.Hidden, c.IntermediateSize, WeightLayout.OutIn, c.MlpBias);
        down_proj = DenseLinear.FromSource(src, prefix + ".down_proj", c.IntermediateSize, c.Hidden, WeightLayout.OutIn, c.MlpBias);
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
