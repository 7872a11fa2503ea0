using System.Text.Json;

namespace GeoShare.Models;

/// <summary>A model's config.json, parsed into the record of its architecture.</summary>
public abstract record ModelConfig
{
    public static readonly string[] SupportedModelTypes = ["gpt2", "llama", "vit"];

    public abstract string ModelType { get; }
    public abstract int NumLayers { get; }
    public abstract int HiddenSize { get; }

    /// <summary>The config.json text as read, copied unchanged into compressed checkpoints.</summary>
    public string RawJson { get; init; } = "{}";

    public static ModelConfig Load(string modelDir)
    {
        if (!Directory.Exists(modelDir)) throw BadInputException.For(modelDir, "model folder not found");
        string path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path)) throw BadInputException.For(path, "missing (a Hugging Face model folder needs config.json)");
        string text = File.ReadAllText(path);
        return Parse(text, path);
    }

    public static ModelConfig Parse(string json, string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json); }
        catch (JsonException e) { throw BadInputException.For(path, $"not valid JSON ({e.Message.Split('.')[0]})"); }
        using (doc)
        {
            var r = new ConfigReader(doc.RootElement, path);
            string type = r.String("model_type");
            ModelConfig cfg = type switch
            {
                "gpt2" => Gpt2Config.From(r),
                "llama" => LlamaConfig.From(r),
                "vit" => VitConfig.From(r),
                _ => throw BadInputException.For(path, $"unsupported model_type '{type}' (supported: {string.Join(", ", SupportedModelTypes)})"),
            };
            return cfg with { RawJson = json };
        }
    }
}

/// <summary>GPT-2 (GPT2LMHeadModel): learned positions, pre-LayerNorm blocks, Conv1D projections.</summary>
public sealed record Gpt2Config(
    int VocabSize, int NPositions, int NEmbd, int NLayer, int NHead, int NInner,
    double LayerNormEpsilon, string Activation, bool TieWordEmbeddings) : ModelConfig
{
    public override string ModelType => "gpt2";
    public override int NumLayers => NLayer;
    public override int HiddenSize => NEmbd;

    internal static Gpt2Config From(ConfigReader r)
    {
        int nEmbd = r.Int("n_embd");
        var c = new Gpt2Config(
            r.Int("vocab_size"), r.Int("n_positions"), nEmbd, r.Int("n_layer"), r.Int("n_head"),
            r.OptionalInt("n_inner") ?? 4 * nEmbd, r.OptionalDouble("layer_norm_epsilon") ?? 1e-5,
            r.OptionalString("activation_function") ?? "gelu_new", r.OptionalBool("tie_word_embeddings") ?? true);
        r.Require(c.NEmbd % c.NHead == 0, "n_embd must be divisible by n_head");
        r.Require(c.Activation is "gelu_new" or "gelu" or "relu", $"unsupported activation_function '{c.Activation}' (supported: gelu_new, gelu, relu)");
        return c;
    }
}

/// <summary>LLaMA (LlamaForCausalLM): RMSNorm, rotary positions, grouped-query attention, SwiGLU.</summary>
public sealed record LlamaConfig(
    int VocabSize, int Hidden, int IntermediateSize, int Layers, int NumAttentionHeads, int NumKeyValueHeads,
    int HeadDim, double RmsNormEps, double RopeTheta, bool TieWordEmbeddings, bool AttentionBias, bool MlpBias,
    int MaxPositionEmbeddings) : ModelConfig
{
    public override string ModelType => "llama";
    public override int NumLayers => Layers;
    public override int HiddenSize => Hidden;

    internal static LlamaConfig From(ConfigReader r)
    {
        int hidden = r.Int("hidden_size");
        int heads = r.Int("num_attention_heads");
        // rope_theta sits at the top level in older configs and inside rope_parameters in newer ones.
        double? theta = r.OptionalDouble("rope_theta");
        string ropeType = "default";
        if (r.Root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object)
        {
            if (rp.TryGetProperty("rope_theta", out var t) && t.TryGetDouble(out double tv)) theta ??= tv;
            if (rp.TryGetProperty("rope_type", out var rt) && rt.ValueKind == JsonValueKind.String) ropeType = rt.GetString()!;
        }
        if (r.Root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object
            && rs.TryGetProperty("rope_type", out var rst) && rst.ValueKind == JsonValueKind.String)
            ropeType = rst.GetString()!;
        r.Require(ropeType == "default", $"unsupported rope_type '{ropeType}' (supported: default)");
        string act = r.OptionalString("hidden_act") ?? "silu";
        r.Require(act == "silu", $"unsupported hidden_act '{act}' (supported: silu)");
        var c = new LlamaConfig(
            r.Int("vocab_size"), hidden, r.Int("intermediate_size"), r.Int("num_hidden_layers"), heads,
            r.OptionalInt("num_key_value_heads") ?? heads, r.OptionalInt("head_dim") ?? hidden / heads,
            r.OptionalDouble("rms_norm_eps") ?? 1e-6, theta ?? 10000.0, r.OptionalBool("tie_word_embeddings") ?? false,
            r.OptionalBool("attention_bias") ?? false, r.OptionalBool("mlp_bias") ?? false,
            r.OptionalInt("max_position_embeddings") ?? 2048);
        r.Require(c.NumAttentionHeads % c.NumKeyValueHeads == 0, "num_attention_heads must be a multiple of num_key_value_heads");
        r.Require(c.HeadDim % 2 == 0, "head_dim must be even for rotary embeddings");
        return c;
    }
}

/// <summary>ViT (ViTForImageClassification): patch embedding, CLS token, pre-LayerNorm encoder, linear head.</summary>
public sealed record VitConfig(
    int ImageSize, int PatchSize, int NumChannels, int Hidden, int Layers, int NumAttentionHeads,
    int IntermediateSize, double LayerNormEps, bool QkvBias, string HiddenAct, string[] Labels) : ModelConfig
{
    public override string ModelType => "vit";
    public override int NumLayers => Layers;
    public override int HiddenSize => Hidden;
    public int NumLabels => Labels.Length;
    public int NumPatches => (ImageSize / PatchSize) * (ImageSize / PatchSize);

    internal static VitConfig From(ConfigReader r)
    {
        string[] labels;
        if (r.Root.TryGetProperty("id2label", out var map) && map.ValueKind == JsonValueKind.Object)
        {
            var pairs = map.EnumerateObject().Select(p => (Id: int.TryParse(p.Name, out int i) ? i : -1, Label: p.Value.GetString() ?? p.Name)).ToList();
            r.Require(pairs.All(p => p.Id >= 0 && p.Id < pairs.Count) && pairs.Select(p => p.Id).Distinct().Count() == pairs.Count, "id2label keys must be 0..n-1");
            labels = pairs.OrderBy(p => p.Id).Select(p => p.Label).ToArray();
        }
        else
        {
            int n = r.OptionalInt("num_labels") ?? 2;
            labels = Enumerable.Range(0, n).Select(i => $"LABEL_{i}").ToArray();
        }
        var c = new VitConfig(
            r.Int("image_size"), r.Int("patch_size"), r.OptionalInt("num_channels") ?? 3, r.Int("hidden_size"),
            r.Int("num_hidden_layers"), r.Int("num_attention_heads"), r.Int("intermediate_size"),
            r.OptionalDouble("layer_norm_eps") ?? 1e-12, r.OptionalBool("qkv_bias") ?? true,
            r.OptionalString("hidden_act") ?? "gelu", labels);
        r.Require(c.ImageSize % c.PatchSize == 0, "image_size must be a multiple of patch_size");
        r.Require(c.Hidden % c.NumAttentionHeads == 0, "hidden_size must be divisible by num_attention_heads");
        r.Require(c.HiddenAct is "gelu" or "gelu_new" or "relu", $"unsupported hidden_act '{c.HiddenAct}' (supported: gelu, gelu_new, relu)");
        return c;
    }
}

/// <summary>Typed access to config.json fields; every failure names the file and the field.</summary>
internal sealed class ConfigReader(JsonElement root, string path)
{
    public JsonElement Root { get; } = root.ValueKind == JsonValueKind.Object ? root : throw BadInputException.For(path, "config is not a JSON object");

    private JsonElement? Get(string key) =>
        Root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public string String(string key) => OptionalString(key) ?? throw BadInputException.For(path, $"missing field '{key}'");
    public int Int(string key) => OptionalInt(key) ?? throw BadInputException.For(path, $"missing field '{key}'");

    public string? OptionalString(string key) => Get(key) is { } v
        ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw BadInputException.For(path, $"field '{key}' must be a string"))
        : null;

    public int? OptionalInt(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i) || i <= 0)
            throw BadInputException.For(path, $"field '{key}' must be a positive integer");
        return i;
    }

    public double? OptionalDouble(string key)
    {
        if (Get(key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.Number) throw BadInputException.For(path, $"field '{key}' must be a number");
        return v.GetDouble();
    }

    public bool? OptionalBool(string key) => Get(key) is { } v
        ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw BadInputException.For(path, $"field '{key}' must be true or false"))
        : null;

    public void Require(bool condition, string problem)
    {
        if (!condition) throw BadInputException.For(path, problem);
    }
}
