namespace GeoShare.Models;

/// <summary>Qwen2: the LLaMA layout with biases on the q, k and v projections.</summary>
public sealed class Qwen2Architecture : LlamaFamilyArchitecture<Qwen2Config>
{
    public static Qwen2Architecture Instance { get; } = new();
    private Qwen2Architecture() { }

    public override string ModelType => "qwen2";
    protected override string ModelClass => "Qwen2ForCausalLM";
    internal override Qwen2Config Parse(ConfigReader r) => Qwen2Config.From(r);
}

/// <summary>
/// Qwen2 (Qwen2ForCausalLM, also Qwen2.5): LLaMA's blocks with a bias on q_proj, k_proj and v_proj (not o_proj,
/// not the MLP), as transformers hard-codes them. Honoured: head_dim, max_position_embeddings (the ONNX export's rotary
/// tables; absent: 32768), tie_word_embeddings, rms_norm_eps, the rope
/// fields; use_sliding_window true (max_window_layers), a layer_types entry other than full_attention, attention_bias
/// false or mlp_bias true (they would contradict the fixed biases) and hidden_act other than silu are refused.
/// </summary>
public sealed record Qwen2Config(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, RotaryParameters Rope, bool TieWordEmbeddings,
    int MaxPositionEmbeddings) : LlamaFamilyConfig, ICausalLanguageModelConfig
{
    public override Architecture Architecture => Qwen2Architecture.Instance;
    public int MaxPositions => int.MaxValue;
    public override int MaxPositionEmbeddings { get; init; } = MaxPositionEmbeddings;

    /// <summary>transformers' Qwen2Config default max_position_embeddings.</summary>
    public const int DefaultMaxPositionEmbeddings = 32768;

    public override LlamaDecoderSpec Decoder => new(VocabSize, Hidden, IntermediateSize, Layers, NumAttentionHeads, NumKeyValueHeads,
        HeadDim, RmsNormEps, Rope, TieWordEmbeddings, QkvBias: true, OutputBias: false, MlpBias: false, QkNorm: false, SlidingWindow: null);

    internal static Qwen2Config From(ConfigReader r)
    {
        var f = LlamaFamilyFields.Read(r, defaultKvHeads: null, defaultHeadDim: null, kvHeadsRequired: true);
        LlamaFamilyFields.RefuseQwenSlidingWindow(r);
        r.Require(r.OptionalBool("attention_bias") != false, "field 'attention_bias' is false: Qwen2 always has q/k/v biases");
        r.Require(r.OptionalBool("mlp_bias") != true, "field 'mlp_bias' is true: Qwen2's MLP has no biases");
        return new Qwen2Config(f.VocabSize, f.Hidden, f.IntermediateSize, f.Layers, f.Heads, f.KvHeads, f.HeadDim, f.RmsNormEps,
            f.Rope, f.TieWordEmbeddings, r.OptionalInt("max_position_embeddings") ?? DefaultMaxPositionEmbeddings);
    }
}
