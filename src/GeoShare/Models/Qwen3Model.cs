namespace GeoShare.Models;

/// <summary>Qwen3: the LLaMA layout with per-head RMSNorm on q and k and an explicit head_dim.</summary>
public sealed class Qwen3Architecture : LlamaFamilyArchitecture<Qwen3Config>
{
    public static Qwen3Architecture Instance { get; } = new();
    private Qwen3Architecture() { }

    public override string ModelType => "qwen3";
    protected override string ModelClass => "Qwen3ForCausalLM";
    internal override Qwen3Config Parse(ConfigReader r) => Qwen3Config.From(r);
}

/// <summary>
/// Qwen3 (Qwen3ForCausalLM): LLaMA's blocks with q_norm and k_norm, RMSNorms of weight [head_dim] applied to every
/// head of q and k before the rotation; head_dim is read from config.json (required: transformers' default 128 rarely
/// equals hidden_size / num_attention_heads). Honoured: attention_bias (q, k, v and o), max_position_embeddings (the
/// ONNX export's rotary tables; absent: 32768), tie_word_embeddings,
/// rms_norm_eps, the rope fields; use_sliding_window true, a layer_types entry other than full_attention, mlp_bias true
/// and hidden_act other than silu are refused.
/// </summary>
public sealed record Qwen3Config(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, RotaryParameters Rope, bool TieWordEmbeddings, bool AttentionBias,
    int MaxPositionEmbeddings) : LlamaFamilyConfig, ICausalLanguageModelConfig
{
    public override Architecture Architecture => Qwen3Architecture.Instance;
    public int MaxPositions => int.MaxValue;
    public override int MaxPositionEmbeddings { get; init; } = MaxPositionEmbeddings;

    /// <summary>transformers' Qwen3Config default max_position_embeddings.</summary>
    public const int DefaultMaxPositionEmbeddings = 32768;

    public override LlamaDecoderSpec Decoder => new(VocabSize, Hidden, IntermediateSize, Layers, NumAttentionHeads, NumKeyValueHeads,
        HeadDim, RmsNormEps, Rope, TieWordEmbeddings, QkvBias: AttentionBias, OutputBias: AttentionBias, MlpBias: false, QkNorm: true, SlidingWindow: null);

    internal static Qwen3Config From(ConfigReader r)
    {
        r.Int("head_dim");
        var f = LlamaFamilyFields.Read(r, defaultKvHeads: null, defaultHeadDim: null, kvHeadsRequired: true);
        LlamaFamilyFields.RefuseQwenSlidingWindow(r);
        r.Require(r.OptionalBool("mlp_bias") != true, "field 'mlp_bias' is true: Qwen3's MLP has no biases");
        return new Qwen3Config(f.VocabSize, f.Hidden, f.IntermediateSize, f.Layers, f.Heads, f.KvHeads, f.HeadDim, f.RmsNormEps,
            f.Rope, f.TieWordEmbeddings, r.OptionalBool("attention_bias") ?? false,
            r.OptionalInt("max_position_embeddings") ?? DefaultMaxPositionEmbeddings);
    }
}
