using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

#pragma warning disable IDE1006 // field names are the checkpoint's module names

/// <summary>GPT-2: checkpoint layout, layer sites, default sharing and tying, declared once.</summary>
public sealed class Gpt2Architecture : Architecture<Gpt2Config>
{
    public static Gpt2Architecture Instance { get; } = new();
    private Gpt2Architecture() { }

    public const string EmbeddingPrefix = "transformer.wte";
    public const string HeadPrefix = "lm_head";

    public override string ModelType => "gpt2";
    public override ModelTask Task => ModelTask.CausalLanguageModel;
    public override string LayerPrefix(int layer) => $"transformer.h.{layer}";
    public override IReadOnlyList<string> ProjectionTypes { get; } = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

    /// <summary>Basis Sharing's GPT-2 configuration: c_attn, attn.c_proj and c_fc share; mlp.c_proj stays per layer.</summary>
    public override IReadOnlyList<string> DefaultSharedTypes { get; } = ["attn.c_attn", "attn.c_proj", "mlp.c_fc"];

    public override IReadOnlyDictionary<string, string> TiedKeys(ModelConfig config) =>
        ((Gpt2Config)config).TieWordEmbeddings ? new Dictionary<string, string> { [HeadPrefix + ".weight"] = EmbeddingPrefix + ".weight" } : NoTiedKeys;

    /// <summary>The causal-mask buffers of older checkpoints; the attention computes the mask.</summary>
    public override IReadOnlyList<string> IgnoredSuffixes { get; } = [".attn.bias", ".attn.masked_bias"];

    internal override Gpt2Config Parse(ConfigReader r) => Gpt2Config.From(r);
    protected override PretrainedModel Build(Gpt2Config config, TensorSource src) => new Gpt2LMHeadModel(config, src);

    protected override Func<ModelConfig, TensorSource, int, DecoderLayer> LayerBuilder { get; } =
        (config, src, i) => new Gpt2Block((Gpt2Config)config, src, Instance.LayerPrefix(i), i);
}

/// <summary>
/// GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, Conv1D projections. Attention scores are
/// q·k / √head_dim unless <paramref name="ScaleAttnWeights"/> is false (then q·k), and divided by layer index + 1
/// when <paramref name="ScaleAttnByInverseLayerIdx"/> is true; <paramref name="ReorderAndUpcastAttn"/> computes
/// scores and softmax in float32 when the model computes in half precision (in float32 it is the same function).
/// </summary>
public sealed record Gpt2Config(
    int VocabSize, int NPositions, int NEmbd, int NLayer, int NHead, int NInner,
    double LayerNormEpsilon, string Activation, bool TieWordEmbeddings,
    bool ScaleAttnWeights = true, bool ScaleAttnByInverseLayerIdx = false, bool ReorderAndUpcastAttn = false) : ModelConfig, ICausalLanguageModelConfig
{
    public override Architecture Architecture => Gpt2Architecture.Instance;
    public int MaxPositions => NPositions;
    public override int NumLayers => NLayer;
    public override int HiddenSize => NEmbd;

    internal static Gpt2Config From(ConfigReader r)
    {
        int nEmbd = r.Int("n_embd");
        var c = new Gpt2Config(
            r.Int("vocab_size"), r.Int("n_positions"), nEmbd, r.Int("n_layer"), r.Int("n_head"),
            r.OptionalInt("n_inner") ?? 4 * nEmbd, r.OptionalPositive("layer_norm_epsilon") ?? 1e-5,
            r.OptionalString("activation_function") ?? "gelu_new", r.OptionalBool("tie_word_embeddings") ?? true,
            r.OptionalBool("scale_attn_weights") ?? true, r.OptionalBool("scale_attn_by_inverse_layer_idx") ?? false,
            r.OptionalBool("reorder_and_upcast_attn") ?? false);
        r.Require(c.NEmbd % c.NHead == 0, "n_embd must be divisible by n_head");
        // Cross-attention needs an encoder's states, which a causal LM evaluation does not have.
        r.Require(r.OptionalBool("add_cross_attention") != true, "field 'add_cross_attention' is true: cross-attention is not supported");
        r.Require(c.Activation is "gelu_new" or "gelu" or "relu", $"unsupported activation_function '{c.Activation}' (supported: gelu_new, gelu, relu)");
        return c;
    }
}

/// <summary>GPT2LMHeadModel: transformer.{wte, wpe, h.N, ln_f} and an lm_head tied to wte (or its own).</summary>
public sealed class Gpt2LMHeadModel : PretrainedModel, ILayeredModel
{
    private readonly Gpt2Model transformer;
    private readonly DenseLinear lm_head;

    public Gpt2LMHeadModel(Gpt2Config config, TensorSource src) : base(nameof(Gpt2LMHeadModel), config)
    {
        transformer = new Gpt2Model(config, src);
        lm_head = config.TieWordEmbeddings
            ? new DenseLinear(transformer.wte.Weight, null, WeightLayout.OutIn)
            : DenseLinear.FromSource(src, Gpt2Architecture.HeadPrefix, config.NEmbd, config.VocabSize, WeightLayout.OutIn, hasBias: false);
        RegisterComponents();
    }

    public Gpt2Config Gpt2 => (Gpt2Config)Config;

    /// <param name="ids">[B, T] token ids, T ≤ n_positions.</param>
    /// <returns>[B, T, vocab] logits.</returns>
    public override Tensor forward(Tensor ids)
    {
        var (x, context) = Embed(ids);
        for (int i = 0; i < Config.NumLayers; i++) x = Layer(i).Forward(x, context);
        return Head(x);
    }

    public (Tensor Hidden, LayerContext Context) Embed(Tensor ids) => (transformer.Embed(ids), new LayerContext());

    public DecoderLayer Layer(int index) => transformer.h[index];

    public Tensor Head(Tensor hidden) => lm_head.call(transformer.ln_f.call(hidden));
}

public sealed class Gpt2Model : Module<Tensor, Tensor>
{
    internal readonly TokenEmbedding wte;
    private readonly TokenEmbedding wpe;
    internal readonly ModuleList<Gpt2Block> h;
    internal readonly LayerNorm ln_f;

    public Gpt2Model(Gpt2Config c, TensorSource src) : base(nameof(Gpt2Model))
    {
        wte = new TokenEmbedding(src, Gpt2Architecture.EmbeddingPrefix, c.VocabSize, c.NEmbd);
        wpe = new TokenEmbedding(src, "transformer.wpe", c.NPositions, c.NEmbd);
        h = new ModuleList<Gpt2Block>(Enumerable.Range(0, c.NLayer).Select(i => new Gpt2Block(c, src, c.Architecture.LayerPrefix(i), i)).ToArray());
        ln_f = new LayerNorm(src, "transformer.ln_f", c.NEmbd, c.LayerNormEpsilon);
        RegisterComponents();
    }

    /// <summary>Token plus position embeddings: the hidden state entering layer 0.</summary>
    public Tensor Embed(Tensor ids)
    {
        using var positions = Scalars.Arange(ids.shape[1], ScalarType.Int64, ids.device);
        return wte.call(ids).add(wpe.call(positions), Scalars.One);
    }

    public override Tensor forward(Tensor ids)
    {
        var x = Embed(ids);
        using var context = new LayerContext();
        foreach (var block in h) x = block.Forward(x, context);
        return ln_f.call(x);
    }
}

public sealed class Gpt2Block : DecoderLayer
{
    private readonly LayerNorm ln_1;
    private readonly Gpt2Attention attn;
    private readonly LayerNorm ln_2;
    private readonly Gpt2Mlp mlp;

    public Gpt2Block(Gpt2Config c, TensorSource src, string prefix, int layer) : base(nameof(Gpt2Block))
    {
        ln_1 = new LayerNorm(src, prefix + ".ln_1", c.NEmbd, c.LayerNormEpsilon);
        attn = new Gpt2Attention(c, src, prefix + ".attn", layer);
        ln_2 = new LayerNorm(src, prefix + ".ln_2", c.NEmbd, c.LayerNormEpsilon);
        mlp = new Gpt2Mlp(c, src, prefix + ".mlp");
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, LayerContext context)
    {
        // Free this layer's intermediates now (autograd keeps what backward needs).
        using var scope = torch.NewDisposeScope();
        x = x.add(attn.call(ln_1.call(x)), Scalars.One);
        return x.add(mlp.call(ln_2.call(x)), Scalars.One).MoveToOuterDisposeScope();
    }
}

public sealed class Gpt2Attention : ProjectionOwner
{
    private LinearMap c_attn;
    private LinearMap c_proj;
    private readonly int _heads;
    private readonly double? _scale;
    private readonly bool _upcast;

    public Gpt2Attention(Gpt2Config c, TensorSource src, string prefix, int layer) : base(nameof(Gpt2Attention))
    {
        c_attn = DenseLinear.FromSource(src, prefix + ".c_attn", c.NEmbd, 3 * c.NEmbd, WeightLayout.InOut, hasBias: true);
        c_proj = DenseLinear.FromSource(src, prefix + ".c_proj", c.NEmbd, c.NEmbd, WeightLayout.InOut, hasBias: true);
        _heads = c.NHead;
        // transformers' GPT2Attention: scores / √head_dim if scale_attn_weights, then / (layer_idx + 1) if
        // scale_attn_by_inverse_layer_idx. Null keeps the default 1/√head_dim of the fused kernel.
        if (!c.ScaleAttnWeights || c.ScaleAttnByInverseLayerIdx)
            _scale = (c.ScaleAttnWeights ? 1.0 / Math.Sqrt(c.NEmbd / c.NHead) : 1.0) / (c.ScaleAttnByInverseLayerIdx ? layer + 1 : 1);
        _upcast = c.ReorderAndUpcastAttn;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], t = x.shape[1], d = x.shape[2], hd = d / _heads;
        var qkv = c_attn.call(x).split(d, dim: 2);
        Tensor Heads(Tensor z) => z.view(b, t, _heads, hd).transpose(1, 2);
        var y = _upcast && (x.dtype is ScalarType.Float16 or ScalarType.BFloat16)
            ? UpcastAttention(Heads(qkv[0]), Heads(qkv[1]), Heads(qkv[2]))
            : Attention.Compute(Heads(qkv[0]), Heads(qkv[1]), Heads(qkv[2]), causal: true, scale: _scale);
        return c_proj.call(y.transpose(1, 2).reshape(b, t, d));
    }

    /// <summary>reorder_and_upcast_attn: scores and softmax in float32, the weights cast back to v's dtype (transformers' _upcast_and_reordered_attn).</summary>
    private Tensor UpcastAttention(Tensor q, Tensor k, Tensor v)
    {
        double scale = _scale ?? 1.0 / Math.Sqrt(q.shape[^1]);
        var scores = q.to_type(ScalarType.Float32).MulScalar(scale).matmul(k.to_type(ScalarType.Float32).transpose(-2, -1));
        long t = q.shape[^2], s = k.shape[^2];
        using var future = torch.ones(t, s, dtype: ScalarType.Bool, device: q.device).triu(1 + s - t);
        return functional.softmax(scores.MaskedFillScalar(future, double.NegativeInfinity), -1).to_type(v.dtype).matmul(v);
    }

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "c_attn" => c_attn,
        "c_proj" => c_proj,
        _ => throw new ArgumentException($"no projection '{localName}' in GPT-2 attention"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "c_attn": c_attn = Swap(localName, c_attn, map); break;
            case "c_proj": c_proj = Swap(localName, c_proj, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in GPT-2 attention");
        }
    }
}

public sealed class Gpt2Mlp : ProjectionOwner
{
    private LinearMap c_fc;
    private LinearMap c_proj;
    private readonly string _activation;

    public Gpt2Mlp(Gpt2Config c, TensorSource src, string prefix) : base(nameof(Gpt2Mlp))
    {
        c_fc = DenseLinear.FromSource(src, prefix + ".c_fc", c.NEmbd, c.NInner, WeightLayout.InOut, hasBias: true);
        c_proj = DenseLinear.FromSource(src, prefix + ".c_proj", c.NInner, c.NEmbd, WeightLayout.InOut, hasBias: true);
        _activation = c.Activation;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => c_proj.call(Activations.Apply(_activation, c_fc.call(x)));

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "c_fc" => c_fc,
        "c_proj" => c_proj,
        _ => throw new ArgumentException($"no projection '{localName}' in GPT-2 MLP"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "c_fc": c_fc = Swap(localName, c_fc, map); break;
            case "c_proj": c_proj = Swap(localName, c_proj, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in GPT-2 MLP");
        }
    }
}
