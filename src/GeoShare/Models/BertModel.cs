using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

#pragma warning disable IDE1006 // field names are the checkpoint's module names

/// <summary>
/// BERT (BertModel, as sentence-transformers' checkpoints store it: keys without a "bert." prefix) with
/// sentence-transformers' mean pooling over the attention mask and L2 normalisation: the sentence encoder of
/// all-MiniLM-L6-v2. Checkpoint layout, layer sites and default sharing, declared once (no tied keys).
/// </summary>
public sealed class BertArchitecture : Architecture<BertConfig>
{
    public static BertArchitecture Instance { get; } = new();
    private BertArchitecture() { }

    public override string ModelType => "bert";
    public override ModelTask Task => ModelTask.SentenceEncoder;
    public override string LayerPrefix(int layer) => $"encoder.layer.{layer}";
    public override IReadOnlyList<string> ProjectionTypes { get; } =
        ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"];

    /// <summary>As for the ViT (the same post-attention layout): query, key, value and the MLP input share; the two output projections stay per layer.</summary>
    public override IReadOnlyList<string> DefaultSharedTypes { get; } =
        ["attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense"];

    /// <summary>
    /// The position-id buffer older checkpoints carry (positions are 0..T−1 here), and the pooler, which
    /// sentence-transformers' mean pooling does not use.
    /// </summary>
    public override IReadOnlyList<string> IgnoredSuffixes { get; } = ["embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"];

    /// <summary>
    /// The config.json of a BERT encoder whose checkpoint tensors have <paramref name="shapes"/> (Hugging Face names), or null
    /// when they are not a BERT encoder's (an importer that has the weights but no config asks here). What the weights do not
    /// say (heads, epsilon, activation) is given.
    /// </summary>
    public static string? ConfigJsonFromTensors(IReadOnlyDictionary<string, long[]> shapes, int heads, double layerNormEps, string hiddenAct, int padTokenId)
    {
        if (!shapes.TryGetValue("embeddings.word_embeddings.weight", out var word) || word.Length != 2) return null;
        if (!shapes.TryGetValue("embeddings.position_embeddings.weight", out var pos) || !shapes.TryGetValue("embeddings.token_type_embeddings.weight", out var types)) return null;
        if (!shapes.TryGetValue("encoder.layer.0.intermediate.dense.weight", out var inter)) return null;
        int layers = 0;
        while (shapes.ContainsKey($"encoder.layer.{layers}.attention.self.query.weight")) layers++;
        var config = new Dictionary<string, object>
        {
            ["architectures"] = new[] { "BertModel" },
            ["model_type"] = Instance.ModelType,
            ["vocab_size"] = word[0],
            ["hidden_size"] = word[1],
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = heads,
            ["intermediate_size"] = inter[0],
            ["hidden_act"] = hiddenAct,
            ["max_position_embeddings"] = pos[0],
            ["type_vocab_size"] = types[0],
            ["layer_norm_eps"] = layerNormEps,
            ["pad_token_id"] = padTokenId,
            ["position_embedding_type"] = "absolute",
            ["torch_dtype"] = "float32",
        };
        return System.Text.Json.JsonSerializer.Serialize(config, new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }

    internal override BertConfig Parse(ConfigReader r) => BertConfig.From(r);
    protected override PretrainedModel Build(BertConfig config, TensorSource src) => new BertSentenceEncoder(config, src);
}

/// <summary>What evaluating a sentence encoder needs from its config: ids below the vocabulary, the longest input, the padding id.</summary>
public interface ISentenceEncoderConfig
{
    int VocabSize { get; }
    int MaxPositions { get; }

    /// <summary>The id the input is padded with; positions holding it are masked out of attention and pooling.</summary>
    int PadTokenId { get; }

    /// <summary>Width of the sentence embedding.</summary>
    int EmbeddingSize { get; }
}

/// <summary>
/// BERT's config.json. Honoured: vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
/// hidden_act (gelu = erf, gelu_new, relu), max_position_embeddings, type_vocab_size, layer_norm_eps, pad_token_id.
/// Refused: position_embedding_type other than absolute, is_decoder or add_cross_attention true.
/// </summary>
public sealed record BertConfig(
    int VocabSize, int Hidden, int Layers, int NumAttentionHeads, int IntermediateSize, string HiddenAct,
    int MaxPositionEmbeddings, int TypeVocabSize, double LayerNormEps, int PadTokenId) : ModelConfig, ISentenceEncoderConfig
{
    public override Architecture Architecture => BertArchitecture.Instance;
    public override int NumLayers => Layers;
    public override int HiddenSize => Hidden;
    public int MaxPositions => MaxPositionEmbeddings;
    public int EmbeddingSize => Hidden;

    internal static BertConfig From(ConfigReader r)
    {
        string positions = r.OptionalString("position_embedding_type") ?? "absolute";
        r.Require(positions == "absolute", $"position_embedding_type '{BoundedFile.Quote(positions, 40)}' is not supported (absolute only)");
        r.Require(r.OptionalBool("is_decoder") != true, "is_decoder true is not supported (a BERT encoder)");
        r.Require(r.OptionalBool("add_cross_attention") != true, "add_cross_attention true is not supported");
        int? pad = r.Root.TryGetProperty("pad_token_id", out var p) && p.ValueKind == System.Text.Json.JsonValueKind.Number && p.TryGetInt32(out int pv) ? pv : null;
        var c = new BertConfig(
            r.Int("vocab_size"), r.Int("hidden_size"), r.Int("num_hidden_layers"), r.Int("num_attention_heads"), r.Int("intermediate_size"),
            r.OptionalString("hidden_act") ?? "gelu", r.OptionalInt("max_position_embeddings") ?? 512, r.OptionalInt("type_vocab_size") ?? 2,
            r.OptionalPositive("layer_norm_eps") ?? 1e-12, pad ?? 0);
        r.Require(c.Hidden % c.NumAttentionHeads == 0, "hidden_size must be divisible by num_attention_heads");
        r.Require(c.HiddenAct is "gelu" or "gelu_new" or "relu", $"unsupported hidden_act '{BoundedFile.Quote(c.HiddenAct, 40)}' (supported: gelu, gelu_new, relu)");
        r.Require(c.PadTokenId >= 0 && c.PadTokenId < c.VocabSize, $"field 'pad_token_id' must be within 0..{c.VocabSize - 1}, got {c.PadTokenId}");
        return c;
    }
}

/// <summary>
/// A sentence encoder: input ids [B, T] (int64; positions holding pad_token_id are padding, masked out of attention and
/// pooling; token type 0 throughout) → the L2-normalised mean of the last hidden states over the unmasked positions,
/// [B, hidden]. <see cref="LastHiddenState"/> gives BertModel's own output.
/// </summary>
public sealed class BertSentenceEncoder : PretrainedModel
{
    private readonly BertEmbeddings embeddings;
    private readonly BertEncoder encoder;
    private readonly int _pad;

    public BertSentenceEncoder(BertConfig config, TensorSource src) : base(nameof(BertSentenceEncoder), config)
    {
        embeddings = new BertEmbeddings(config, src);
        encoder = new BertEncoder(config, src);
        _pad = config.PadTokenId;
        RegisterComponents();
    }

    public BertConfig Bert => (BertConfig)Config;

    /// <summary>1 where <paramref name="ids"/> is a token, 0 where it is padding, in the model's dtype: [B, T].</summary>
    public Tensor AttentionMask(Tensor ids) => ids.NeScalar(_pad).to_type(DType);

    /// <summary>BertModel's last_hidden_state [B, T, hidden] (padding positions computed but masked out of attention).</summary>
    public Tensor LastHiddenState(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var keep = ids.NeScalar(_pad);
        // [B, 1, 1, T]: true where a key may be attended to.
        var allowed = keep.unsqueeze(1).unsqueeze(1);
        return encoder.Run(embeddings.call(ids), allowed).MoveToOuterDisposeScope();
    }

    /// <returns>[B, hidden]: sentence-transformers' Pooling (mean over the attention mask) then Normalize (x / max(‖x‖, 1e-12)).</returns>
    public override Tensor forward(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        var hidden = LastHiddenState(ids);
        var mask = AttentionMask(ids).unsqueeze(-1);
        var summed = hidden.mul(mask).sum(1);
        var counts = mask.sum(1).ClampMin(1e-9);
        var mean = summed.div(counts);
        return functional.normalize(mean, p: 2.0, dim: 1, eps: 1e-12).MoveToOuterDisposeScope();
    }
}

public sealed class BertEmbeddings : Module<Tensor, Tensor>
{
    private readonly TokenEmbedding word_embeddings;
    private readonly TokenEmbedding position_embeddings;
    private readonly TokenEmbedding token_type_embeddings;
    private readonly LayerNorm LayerNorm;
    private readonly int _maxPositions;

    public BertEmbeddings(BertConfig c, TensorSource src) : base(nameof(BertEmbeddings))
    {
        word_embeddings = new TokenEmbedding(src, "embeddings.word_embeddings", c.VocabSize, c.Hidden);
        position_embeddings = new TokenEmbedding(src, "embeddings.position_embeddings", c.MaxPositionEmbeddings, c.Hidden);
        token_type_embeddings = new TokenEmbedding(src, "embeddings.token_type_embeddings", c.TypeVocabSize, c.Hidden);
        LayerNorm = new LayerNorm(src, "embeddings.LayerNorm", c.Hidden, c.LayerNormEps);
        _maxPositions = c.MaxPositionEmbeddings;
        RegisterComponents();
    }

    /// <summary>Word + position (0..T−1) + token type 0 embeddings, layer-normalised.</summary>
    public override Tensor forward(Tensor ids)
    {
        long t = ids.shape[1];
        if (t > _maxPositions) throw new ArgumentException($"input of {t} tokens exceeds the model's {_maxPositions} positions");
        using var scope = torch.NewDisposeScope();
        var positions = Scalars.Arange(t, ScalarType.Int64, ids.device);
        var types = torch.zeros(1, dtype: ScalarType.Int64, device: ids.device);
        var x = word_embeddings.call(ids).add(position_embeddings.call(positions), Scalars.One).add(token_type_embeddings.call(types), Scalars.One);
        return LayerNorm.call(x).MoveToOuterDisposeScope();
    }
}

public sealed class BertEncoder : Module<Tensor, Tensor>
{
    private readonly ModuleList<BertLayer> layer;

    public BertEncoder(BertConfig c, TensorSource src) : base(nameof(BertEncoder))
    {
        layer = new ModuleList<BertLayer>(Enumerable.Range(0, c.Layers).Select(i => new BertLayer(c, src, c.Architecture.LayerPrefix(i))).ToArray());
        RegisterComponents();
    }

    public Tensor Run(Tensor x, Tensor allowed)
    {
        foreach (var l in layer) x = l.Run(x, allowed);
        return x;
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("BertEncoder runs with a mask (Run)");
}

/// <summary>Post-LayerNorm block: x = LN(x + attn(x)); x = LN(x + out(act(inter(x)))).</summary>
public sealed class BertLayer : Module<Tensor, Tensor>
{
    private readonly BertAttention attention;
    private readonly DenseProjection intermediate;
    private readonly BertDenseNorm output;
    private readonly string _activation;

    public BertLayer(BertConfig c, TensorSource src, string prefix) : base(nameof(BertLayer))
    {
        attention = new BertAttention(c, src, prefix + ".attention");
        intermediate = new DenseProjection(src, prefix + ".intermediate", c.Hidden, c.IntermediateSize);
        output = new BertDenseNorm(c, src, prefix + ".output", c.IntermediateSize);
        _activation = c.HiddenAct;
        RegisterComponents();
    }

    public Tensor Run(Tensor x, Tensor allowed)
    {
        using var scope = torch.NewDisposeScope();
        var a = attention.Run(x, allowed);
        return output.Run(Activations.Apply(_activation, intermediate.call(a)), a).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("BertLayer runs with a mask (Run)");
}

public sealed class BertAttention : Module<Tensor, Tensor>
{
    private readonly BertSelfAttention self;
    private readonly BertDenseNorm output;

    public BertAttention(BertConfig c, TensorSource src, string prefix) : base(nameof(BertAttention))
    {
        self = new BertSelfAttention(c, src, prefix + ".self");
        output = new BertDenseNorm(c, src, prefix + ".output", c.Hidden);
        RegisterComponents();
    }

    public Tensor Run(Tensor x, Tensor allowed) => output.Run(self.Run(x, allowed), x);

    public override Tensor forward(Tensor x) => throw new NotSupportedException("BertAttention runs with a mask (Run)");
}

public sealed class BertSelfAttention : ProjectionOwner
{
    private LinearMap query, key, value;
    private readonly int _heads;

    public BertSelfAttention(BertConfig c, TensorSource src, string prefix) : base(nameof(BertSelfAttention))
    {
        query = DenseLinear.FromSource(src, prefix + ".query", c.Hidden, c.Hidden, WeightLayout.OutIn, hasBias: true);
        key = DenseLinear.FromSource(src, prefix + ".key", c.Hidden, c.Hidden, WeightLayout.OutIn, hasBias: true);
        value = DenseLinear.FromSource(src, prefix + ".value", c.Hidden, c.Hidden, WeightLayout.OutIn, hasBias: true);
        _heads = c.NumAttentionHeads;
        RegisterComponents();
    }

    /// <param name="allowed">[B, 1, 1, T] bool, true where a key is a token (not padding).</param>
    public Tensor Run(Tensor x, Tensor allowed)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1], d = x.shape[2], hd = d / _heads;
        Tensor Heads(Tensor z) => z.view(b, t, _heads, hd).transpose(1, 2);
        Tensor q = Heads(query.call(x)), k = Heads(key.call(x)), v = Heads(value.call(x));
        Tensor y;
        if (!torch.is_grad_enabled())
            y = functional.scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
        else
        {
            // Masked keys get the dtype's lowest value (transformers' additive mask), so softmax gives them weight 0.
            var scores = q.MulScalar(1.0 / Math.Sqrt(hd)).matmul(k.transpose(-2, -1));
            double lowest = x.dtype == ScalarType.Float64 ? double.MinValue : x.dtype == ScalarType.BFloat16 ? -3.38e38 : float.MinValue;
            using var blocked = allowed.logical_not();
            y = functional.softmax(scores.MaskedFillScalar(blocked, lowest), -1).matmul(v);
        }
        return y.transpose(1, 2).reshape(b, t, d).MoveToOuterDisposeScope();
    }

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "query" => query,
        "key" => key,
        "value" => value,
        _ => throw new ArgumentException($"no projection '{localName}' in BERT self-attention"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "query": query = Swap(localName, query, map); break;
            case "key": key = Swap(localName, key, map); break;
            case "value": value = Swap(localName, value, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in BERT self-attention");
        }
    }
}

/// <summary>BertSelfOutput / BertOutput: LayerNorm(dense(x) + residual).</summary>
public sealed class BertDenseNorm : ProjectionOwner
{
    private LinearMap dense;
    private readonly LayerNorm LayerNorm;

    public BertDenseNorm(BertConfig c, TensorSource src, string prefix, int inFeatures) : base(nameof(BertDenseNorm))
    {
        dense = DenseLinear.FromSource(src, prefix + ".dense", inFeatures, c.Hidden, WeightLayout.OutIn, hasBias: true);
        LayerNorm = new LayerNorm(src, prefix + ".LayerNorm", c.Hidden, c.LayerNormEps);
        RegisterComponents();
    }

    public Tensor Run(Tensor x, Tensor residual) => LayerNorm.call(dense.call(x).add(residual, Scalars.One));

    public override LinearMap GetProjection(string localName) =>
        localName == "dense" ? dense : throw new ArgumentException($"no projection '{localName}' in BERT output");

    public override void SetProjection(string localName, LinearMap map)
    {
        if (localName != "dense") throw new ArgumentException($"no projection '{localName}' in BERT output");
        dense = Swap(localName, dense, map);
    }
}
