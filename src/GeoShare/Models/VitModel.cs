using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

#pragma warning disable IDE1006 // field names are the checkpoint's module names

/// <summary>ViT: checkpoint layout, layer sites and default sharing, declared once (no tied keys).</summary>
public sealed class VitArchitecture : Architecture<VitConfig>
{
    public static VitArchitecture Instance { get; } = new();
    private VitArchitecture() { }

    public override string ModelType => "vit";
    public override ModelTask Task => ModelTask.ImageClassification;
    public override string LayerPrefix(int layer) => $"vit.encoder.layer.{layer}";
    public override IReadOnlyList<string> ProjectionTypes { get; } =
        ["attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense", "intermediate.dense", "output.dense"];

    /// <summary>
    /// The analogue of Basis Sharing's LLaMA finding (Q, K, V, Gate and Up gain from sharing, O and Down lose):
    /// query, key, value and the MLP input share; the two output projections stay per layer.
    /// </summary>
    public override IReadOnlyList<string> DefaultSharedTypes { get; } =
        ["attention.attention.query", "attention.attention.key", "attention.attention.value", "intermediate.dense"];

    internal override VitConfig Parse(ConfigReader r) => VitConfig.From(r);
    protected override PretrainedModel Build(VitConfig config, TensorSource src) => new VitForImageClassification(config, src);
}

/// <summary>ViT (ViTForImageClassification): patch embedding, CLS token, pre-LayerNorm encoder, linear head.</summary>
public sealed record VitConfig(
    int ImageSize, int PatchSize, int NumChannels, int Hidden, int Layers, int NumAttentionHeads,
    int IntermediateSize, double LayerNormEps, bool QkvBias, string HiddenAct, string[] Labels) : ModelConfig, IImageClassifierConfig
{
    public override Architecture Architecture => VitArchitecture.Instance;
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
            r.OptionalPositive("layer_norm_eps") ?? 1e-12, r.OptionalBool("qkv_bias") ?? true,
            r.OptionalString("hidden_act") ?? "gelu", labels);
        r.Require(c.ImageSize % c.PatchSize == 0, "image_size must be a multiple of patch_size");
        r.Require(c.Hidden % c.NumAttentionHeads == 0, "hidden_size must be divisible by num_attention_heads");
        r.Require(c.HiddenAct is "gelu" or "gelu_new" or "relu", $"unsupported hidden_act '{c.HiddenAct}' (supported: gelu, gelu_new, relu)");
        return c;
    }
}

/// <summary>ViTForImageClassification: vit.{embeddings, encoder.layer.N, layernorm} and classifier on the CLS token.</summary>
public sealed class VitForImageClassification : PretrainedModel
{
    private readonly VitModel vit;
    private readonly DenseLinear classifier;

    public VitForImageClassification(VitConfig config, TensorSource src) : base(nameof(VitForImageClassification), config)
    {
        vit = new VitModel(config, src);
        classifier = DenseLinear.FromSource(src, "classifier", config.Hidden, config.NumLabels, WeightLayout.OutIn, hasBias: true);
        RegisterComponents();
    }

    public VitConfig Vit => (VitConfig)Config;

    /// <param name="pixels">[B, C, H, W] normalised pixel values.</param>
    /// <returns>[B, labels] logits.</returns>
    public override Tensor forward(Tensor pixels)
    {
        var hidden = vit.call(pixels);
        return classifier.call(hidden.select(1, 0));
    }
}

public sealed class VitModel : Module<Tensor, Tensor>
{
    private readonly VitEmbeddings embeddings;
    private readonly VitEncoder encoder;
    private readonly LayerNorm layernorm;

    public VitModel(VitConfig c, TensorSource src) : base(nameof(VitModel))
    {
        embeddings = new VitEmbeddings(c, src);
        encoder = new VitEncoder(c, src);
        layernorm = new LayerNorm(src, "vit.layernorm", c.Hidden, c.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels) => layernorm.call(encoder.call(embeddings.call(pixels)));
}

public sealed class VitEmbeddings : Module<Tensor, Tensor>
{
    private readonly Parameter cls_token;
    private readonly Parameter position_embeddings;
    private readonly VitPatchEmbeddings patch_embeddings;

    public VitEmbeddings(VitConfig c, TensorSource src) : base(nameof(VitEmbeddings))
    {
        cls_token = new Parameter(src.Take("vit.embeddings.cls_token", 1, 1, c.Hidden), requires_grad: false);
        position_embeddings = new Parameter(src.Take("vit.embeddings.position_embeddings", 1, c.NumPatches + 1, c.Hidden), requires_grad: false);
        patch_embeddings = new VitPatchEmbeddings(c, src);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels)
    {
        var patches = patch_embeddings.call(pixels);
        var cls = cls_token.expand(patches.shape[0], -1, -1);
        return torch.cat([cls, patches], 1).add(position_embeddings, Scalars.One);
    }
}

public sealed class VitPatchEmbeddings : Module<Tensor, Tensor>
{
    private readonly PatchProjection projection;

    public VitPatchEmbeddings(VitConfig c, TensorSource src) : base(nameof(VitPatchEmbeddings))
    {
        projection = new PatchProjection(c, src, "vit.embeddings.patch_embeddings.projection");
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels) => projection.call(pixels);
}

/// <summary>
/// The Conv2d(kernel = stride = patch) of ViT, computed as a matrix product over non-overlapping patches:
/// the same numbers, and it double-backwards without the NNPACK path.
/// </summary>
public sealed class PatchProjection : Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly Parameter bias;
    private readonly int _patch, _channels, _hidden;

    public PatchProjection(VitConfig c, TensorSource src, string prefix) : base(nameof(PatchProjection))
    {
        _patch = c.PatchSize;
        _channels = c.NumChannels;
        _hidden = c.Hidden;
        weight = new Parameter(src.Take(prefix + ".weight", c.Hidden, c.NumChannels, c.PatchSize, c.PatchSize), requires_grad: false);
        bias = new Parameter(src.TakeZeros(prefix + ".bias", c.Hidden), requires_grad: false);
        RegisterComponents();
    }

    /// <returns>[B, patches, hidden] in row-major patch order, as Conv2d + flatten(2) + transpose gives.</returns>
    public override Tensor forward(Tensor pixels)
    {
        long b = pixels.shape[0], gh = pixels.shape[2] / _patch, gw = pixels.shape[3] / _patch;
        var patches = pixels.reshape(b, _channels, gh, _patch, gw, _patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b, gh * gw, _channels * _patch * _patch);
        return functional.linear(patches, weight.reshape(_hidden, -1), bias);
    }
}

public sealed class VitEncoder : Module<Tensor, Tensor>
{
    private readonly ModuleList<VitLayer> layer;

    public VitEncoder(VitConfig c, TensorSource src) : base(nameof(VitEncoder))
    {
        layer = new ModuleList<VitLayer>(Enumerable.Range(0, c.Layers).Select(i => new VitLayer(c, src, c.Architecture.LayerPrefix(i))).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var l in layer) x = l.call(x);
        return x;
    }
}

public sealed class VitLayer : Module<Tensor, Tensor>
{
    private readonly VitAttention attention;
    private readonly DenseProjection intermediate;
    private readonly DenseProjection output;
    private readonly LayerNorm layernorm_before;
    private readonly LayerNorm layernorm_after;
    private readonly string _activation;

    public VitLayer(VitConfig c, TensorSource src, string prefix) : base(nameof(VitLayer))
    {
        attention = new VitAttention(c, src, prefix + ".attention");
        intermediate = new DenseProjection(src, prefix + ".intermediate", c.Hidden, c.IntermediateSize);
        output = new DenseProjection(src, prefix + ".output", c.IntermediateSize, c.Hidden);
        layernorm_before = new LayerNorm(src, prefix + ".layernorm_before", c.Hidden, c.LayerNormEps);
        layernorm_after = new LayerNorm(src, prefix + ".layernorm_after", c.Hidden, c.LayerNormEps);
        _activation = c.HiddenAct;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        x = x.add(attention.call(layernorm_before.call(x)), Scalars.One);
        return x.add(output.call(Activations.Apply(_activation, intermediate.call(layernorm_after.call(x)))), Scalars.One).MoveToOuterDisposeScope();
    }
}

public sealed class VitAttention : Module<Tensor, Tensor>
{
    private readonly VitSelfAttention attention;
    private readonly DenseProjection output;

    public VitAttention(VitConfig c, TensorSource src, string prefix) : base(nameof(VitAttention))
    {
        attention = new VitSelfAttention(c, src, prefix + ".attention");
        output = new DenseProjection(src, prefix + ".output", c.Hidden, c.Hidden);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => output.call(attention.call(x));
}

public sealed class VitSelfAttention : ProjectionOwner
{
    private LinearMap query, key, value;
    private readonly int _heads;

    public VitSelfAttention(VitConfig c, TensorSource src, string prefix) : base(nameof(VitSelfAttention))
    {
        query = DenseLinear.FromSource(src, prefix + ".query", c.Hidden, c.Hidden, WeightLayout.OutIn, c.QkvBias);
        key = DenseLinear.FromSource(src, prefix + ".key", c.Hidden, c.Hidden, WeightLayout.OutIn, c.QkvBias);
        value = DenseLinear.FromSource(src, prefix + ".value", c.Hidden, c.Hidden, WeightLayout.OutIn, c.QkvBias);
        _heads = c.NumAttentionHeads;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], t = x.shape[1], d = x.shape[2], hd = d / _heads;
        Tensor Heads(Tensor z) => z.view(b, t, _heads, hd).transpose(1, 2);
        var y = Attention.Compute(Heads(query.call(x)), Heads(key.call(x)), Heads(value.call(x)), causal: false);
        return y.transpose(1, 2).reshape(b, t, d);
    }

    public override LinearMap GetProjection(string localName) => localName switch
    {
        "query" => query,
        "key" => key,
        "value" => value,
        _ => throw new ArgumentException($"no projection '{localName}' in ViT self-attention"),
    };

    public override void SetProjection(string localName, LinearMap map)
    {
        switch (localName)
        {
            case "query": query = Swap(localName, query, map); break;
            case "key": key = Swap(localName, key, map); break;
            case "value": value = Swap(localName, value, map); break;
            default: throw new ArgumentException($"no projection '{localName}' in ViT self-attention");
        }
    }
}

