namespace GeoShare.Models;

/// <summary>Mistral: the LLaMA layout with sliding-window attention in every layer.</summary>
public sealed class MistralArchitecture : LlamaFamilyArchitecture<MistralConfig>
{
    public static MistralArchitecture Instance { get; } = new();
    private MistralArchitecture() { }

    public override string ModelType => "mistral";
    protected override string ModelClass => "MistralForCausalLM";
    internal override MistralConfig Parse(ConfigReader r) => MistralConfig.From(r);
}

/// <summary>
/// Mistral (MistralForCausalLM): LLaMA's blocks without biases; position i attends to j with
/// 0 ≤ i − j &lt; sliding_window in every layer. Honoured: sliding_window (absent: transformers' default 4096;
/// null: no window), max_position_embeddings (the ONNX export's rotary tables; absent: 131072), head_dim (null:
/// hidden_size / num_attention_heads), tie_word_embeddings, rms_norm_eps, the rope fields; attention_bias or
/// mlp_bias true (transformers' Mistral has neither) and hidden_act other than silu are refused.
/// </summary>
public sealed record MistralConfig(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, RotaryParameters Rope, bool TieWordEmbeddings, int? SlidingWindow,
    int MaxPositionEmbeddings) : LlamaFamilyConfig, ICausalLanguageModelConfig
{
    /// <summary>transformers' MistralConfig default when config.json has no sliding_window key.</summary>
    public const int DefaultSlidingWindow = 4096;

    /// <summary>transformers' MistralConfig default max_position_embeddings (4096 × 32).</summary>
    public const int DefaultMaxPositionEmbeddings = 4096 * 32;

    public override Architecture Architecture => MistralArchitecture.Instance;
    public int MaxPositions => int.MaxValue;
    public override int MaxPositionEmbeddings { get; init; } = MaxPositionEmbeddings;

    public override LlamaDecoderSpec Decoder => new(VocabSize, Hidden, IntermediateSize, Layers, NumAttentionHeads, NumKeyValueHeads,
        HeadDim, RmsNormEps, Rope, TieWordEmbeddings, QkvBias: false, OutputBias: false, MlpBias: false, QkNorm: false, SlidingWindow);

    internal static MistralConfig From(ConfigReader r)
    {
        var f = LlamaFamilyFields.Read(r, defaultKvHeads: null, defaultHeadDim: null, kvHeadsRequired: true);
        foreach (var bias in new[] { "attention_bias", "mlp_bias" })
            r.Require(r.OptionalBool(bias) != true, $"field '{bias}' is true: Mistral has no biases");
        int? window = r.Has("sliding_window") ? r.OptionalInt("sliding_window") : DefaultSlidingWindow;
        return new MistralConfig(f.VocabSize, f.Hidden, f.IntermediateSize, f.Layers, f.Heads, f.KvHeads, f.HeadDim, f.RmsNormEps,
            f.Rope, f.TieWordEmbeddings, window, r.OptionalInt("max_position_embeddings") ?? DefaultMaxPositionEmbeddings);
    }
}
