using System.Text.Json.Nodes;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// The model families of assets/families (llama with Llama 3 rope scaling, mistral, qwen2, qwen3) against logits of an
/// independent implementation of transformers' definitions; every rope config form, accepted or refused; the config
/// fields that change the computation; GPT-2's attention-scaling flags; every command on every family.
/// </summary>
public class FamilyReferenceTests(ITestOutputHelper output)
{
    public static TheoryData<string> Families => new() { "tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3" };

    private static string Family(string name) => Repo.Path("assets", "families", name);

    private static double ReferenceError(PretrainedModel m, string dir)
    {
        var refs = SafetensorsFile.Open(Path.Combine(dir, "reference_logits.safetensors"));
        using var ids = refs.Read("input_ids");
        using var expected = refs.Read("logits", ScalarType.Float32);
        using var _ = torch.no_grad();
        using var logits = m.call(ids);
        Assert.Equal(expected.shape, logits.shape);
        return TensorAssert.RelativeError(logits, expected);
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void FamilyLogitsMatchTheirReferences(string family)
    {
        var m = ModelLoader.Load(Family(family));
        Assert.Equal(ScalarType.Float32, m.DType);
        double rel = ReferenceError(m, Family(family));
        output.WriteLine($"{family} ({m.Config.ModelType}): ||Δ||/||ref|| = {rel:E3}");
        Assert.True(rel <= 1e-4, $"{family}: relative error {rel:E3}");
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AutogradAttentionComputesWhatTheFusedKernelDoes(string family)
    {
        // analyze and plan differentiate the explicit attention (chunked beyond 64 positions); evaluation runs the fused kernel.
        var m = ModelLoader.Load(Family(family), ScalarType.Float64);
        using var ids = torch.randint(0, 8192, [2, 100], dtype: ScalarType.Int64, generator: new Generator(7));
        Tensor fused;
        using (torch.no_grad()) fused = m.call(ids);
        using var explicitAttention = m.call(ids); // grad mode on: the explicit path
        Assert.True(TensorAssert.RelativeError(explicitAttention, fused) <= 1e-12);
    }

    [Theory]
    [InlineData(null, 1e-12)]
    [InlineData(6, 1e-12)]
    [InlineData(1, 1e-12)]
    public void SlidingWindowAttentionEqualsANaiveLoop(int? window, double tolerance)
    {
        var gen = new Generator(3);
        using var q = torch.randn([1, 2, 70, 4], dtype: ScalarType.Float64, generator: gen);
        using var k = torch.randn([1, 2, 70, 4], dtype: ScalarType.Float64, generator: gen);
        using var v = torch.randn([1, 2, 70, 4], dtype: ScalarType.Float64, generator: gen);
        var naive = torch.zeros_like(q);
        var qa = q.data<double>().ToArray(); var ka = k.data<double>().ToArray(); var va = v.data<double>().ToArray();
        var na = new double[qa.Length];
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 70; i++)
            {
                var js = Enumerable.Range(0, i + 1).Where(j => window is null || i - j < window).ToList();
                var s = js.Select(j => Enumerable.Range(0, 4).Sum(d => qa[(h * 70 + i) * 4 + d] * ka[(h * 70 + j) * 4 + d]) / 2.0).ToList();
                double max = s.Max(), z = s.Sum(x => Math.Exp(x - max));
                for (int n = 0; n < js.Count; n++)
                    for (int d = 0; d < 4; d++)
                        na[(h * 70 + i) * 4 + d] += Math.Exp(s[n] - max) / z * va[(h * 70 + js[n]) * 4 + d];
            }
        using var expected = torch.tensor(na, dtype: ScalarType.Float64).reshape(q.shape);
        Tensor fused;
        using (torch.no_grad()) fused = Attention.Compute(q, k, v, causal: true, window: window);
        using var explicitPath = Attention.Compute(q, k, v, causal: true, window: window);
        Assert.True(TensorAssert.RelativeError(fused, expected) <= tolerance, $"fused {TensorAssert.RelativeError(fused, expected):E3}");
        Assert.True(TensorAssert.RelativeError(explicitPath, expected) <= tolerance, $"explicit {TensorAssert.RelativeError(explicitPath, expected):E3}");
    }

    // ---- rope config forms ----

    private static readonly string Llama3Config = File.ReadAllText(Path.Combine(Family("tiny-llama3"), "config.json"));

    /// <summary>The tiny-llama3 config with its rope fields replaced by <paramref name="edit"/>.</summary>
    private static string RopeVariant(Action<JsonObject> edit)
    {
        var c = JsonNode.Parse(Llama3Config)!.AsObject();
        c.Remove("rope_scaling");
        c.Remove("rope_theta");
        edit(c);
        return c.ToJsonString();
    }

    private static JsonObject Llama3Params(string typeKey = "rope_type") => new()
    {
        [typeKey] = "llama3", ["factor"] = 4.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 8,
    };

    private static readonly RotaryParameters Llama3Rope = new(500000.0, "llama3", 4.0, 1.0, 4.0, 8);

    public static TheoryData<string, string> AcceptedLlama3Forms => new()
    {
        { "rope_scaling + top-level rope_theta (4.x)", RopeVariant(c => { c["rope_theta"] = 500000.0; c["rope_scaling"] = Llama3Params(); }) },
        { "legacy 'type' key", RopeVariant(c => { c["rope_theta"] = 500000.0; c["rope_scaling"] = Llama3Params("type"); }) },
        { "'type' and 'rope_type' agreeing", RopeVariant(c => { c["rope_theta"] = 500000.0; var p = Llama3Params(); p["type"] = "llama3"; c["rope_scaling"] = p; }) },
        { "rope_parameters with rope_theta inside (5.x)", RopeVariant(c => { var p = Llama3Params(); p["rope_theta"] = 500000.0; c["rope_parameters"] = p; }) },
        { "rope_parameters and an equal top-level rope_theta", RopeVariant(c => { var p = Llama3Params(); p["rope_theta"] = 500000.0; c["rope_parameters"] = p; c["rope_theta"] = 500000; }) },
        { "rope_scaling and rope_parameters agreeing", RopeVariant(c => { c["rope_scaling"] = Llama3Params(); var p = Llama3Params(); p["rope_theta"] = 500000.0; c["rope_parameters"] = p; }) },
    };

    [Theory]
    [MemberData(nameof(AcceptedLlama3Forms))]
    public void EveryLlama3ConfigLayoutParsesToTheSameRopeAndMatchesTheReference(string form, string config)
    {
        var parsed = (LlamaConfig)ModelConfig.Parse(config, "config.json");
        Assert.True(parsed.Rope == Llama3Rope, $"{form}: {parsed.Rope}");
        using var tmp = new TempDir();
        string dir = tmp.CopyModel(Family("tiny-llama3"));
        File.WriteAllText(Path.Combine(dir, "config.json"), config);
        double rel = ReferenceError(ModelLoader.Load(dir), Family("tiny-llama3"));
        Assert.True(rel <= 1e-4, $"{form}: relative error {rel:E3}");
    }

    [Fact]
    public void WithoutItsScalingTheLlama3ReferenceIsMissed()
    {
        // The reference can tell the scaling apart: the same weights with unscaled rope are far off.
        using var tmp = new TempDir();
        string dir = tmp.CopyModel(Family("tiny-llama3"));
        File.WriteAllText(Path.Combine(dir, "config.json"), RopeVariant(c => c["rope_theta"] = 500000.0));
        double rel = ReferenceError(ModelLoader.Load(dir), Family("tiny-llama3"));
        output.WriteLine($"tiny-llama3 with default rope: {rel:E3}");
        Assert.True(rel > 1e-3, $"relative error {rel:E3}");
    }

    public static TheoryData<string, string, RotaryParameters> AcceptedForms => new()
    {
        { "no rope fields", RopeVariant(_ => { }), new RotaryParameters(10000) },
        { "rope_scaling null", RopeVariant(c => { c["rope_scaling"] = null; c["rope_theta"] = 5e5; }), new RotaryParameters(5e5) },
        { "rope_parameters default (5.x)", RopeVariant(c => c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 20000.0 }), new RotaryParameters(20000) },
        { "legacy linear", RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 2.0 }), new RotaryParameters(10000, "linear", 2.0) },
        { "linear rope_type", RopeVariant(c => { c["rope_theta"] = 1e6; c["rope_scaling"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 8 }; }), new RotaryParameters(1e6, "linear", 8.0) },
        { "linear in rope_parameters", RopeVariant(c => c["rope_parameters"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 3.0, ["rope_theta"] = 10000.0 }), new RotaryParameters(10000, "linear", 3.0) },
        { "partial_rotary_factor 1", RopeVariant(c => c["partial_rotary_factor"] = 1.0), new RotaryParameters(10000) },
    };

    [Theory]
    [MemberData(nameof(AcceptedForms))]
    public void AcceptedRopeFormsParse(string form, string config, RotaryParameters expected)
    {
        var parsed = (LlamaConfig)ModelConfig.Parse(config, "config.json");
        Assert.True(parsed.Rope == expected, $"{form}: {parsed.Rope}, expected {expected}");
    }

    public static TheoryData<string, string, string> RefusedForms => new()
    {
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 }), "rope_scaling.type", "'dynamic'" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 }), "rope_scaling.rope_type", "'yarn'" },
        { RopeVariant(c => c["rope_parameters"] = new JsonObject { ["rope_type"] = "longrope", ["rope_theta"] = 1e4 }), "rope_parameters.rope_type", "'longrope'" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "su" }), "rope_scaling.type", "'su'" },
        { RopeVariant(c => { c["rope_theta"] = 10000.0; c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 500000.0 }; }), "rope_theta", "conflicts with 'rope_parameters.rope_theta'" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["rope_type"] = "llama3", ["factor"] = 2.0 }), "rope_scaling.", "conflicts with" },
        { RopeVariant(c => { c["rope_scaling"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 2.0 }; c["rope_parameters"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = 4.0 }; }), "rope_scaling.factor", "conflicts with 'rope_parameters.factor'" },
        { RopeVariant(c => { c["rope_scaling"] = Llama3Params(); c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 1e4 }; }), "rope_scaling.rope_type", "conflicts with 'rope_parameters.rope_type'" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear" }), "rope_scaling.factor", "missing" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 0 }), "rope_scaling.factor", "positive" },
        { RopeVariant(c => { var p = Llama3Params(); p.Remove("low_freq_factor"); c["rope_scaling"] = p; }), "rope_scaling.low_freq_factor", "missing" },
        { RopeVariant(c => { var p = Llama3Params(); p.Remove("factor"); p["rope_theta"] = 1e4; c["rope_parameters"] = p; }), "rope_parameters.factor", "missing" },
        { RopeVariant(c => { var p = Llama3Params(); p["high_freq_factor"] = 1.0; c["rope_scaling"] = p; }), "rope_scaling.high_freq_factor", "greater than low_freq_factor" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 2.0, ["attention_factor"] = 1.5 }), "rope_scaling.attention_factor", "not used by rope type 'linear'" },
        { RopeVariant(c => c["rope_scaling"] = new JsonObject { ["factor"] = 2.0 }), "rope_scaling.factor", "not used by rope type 'default'" },
        { RopeVariant(c => c["rope_scaling"] = 2.0), "rope_scaling", "must be an object" },
        { RopeVariant(c => c["partial_rotary_factor"] = 0.5), "partial_rotary_factor", "partial rotary" },
        { RopeVariant(c => c["rope_parameters"] = new JsonObject { ["rope_type"] = "default", ["rope_theta"] = 1e4, ["partial_rotary_factor"] = 0.25 }), "rope_parameters.partial_rotary_factor", "partial rotary" },
    };

    [Theory]
    [MemberData(nameof(RefusedForms))]
    public void RefusedRopeFormsNameConfigJsonAndTheField(string config, string field, string problem)
    {
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(config, "/m/config.json"));
        Assert.StartsWith("/m/config.json: field '", e.Message);
        Assert.Contains($"'{field}", e.Message);
        Assert.Contains(problem, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void RopeScalingIsComputedAsTransformersDoes()
    {
        using var plain = new RotaryParameters(10000).InverseFrequencies(16);
        using var linear = new RotaryParameters(10000, "linear", 2.5).InverseFrequencies(16);
        Assert.True(linear.eq(plain.DivScalar(2.5)).all().item<bool>());

        // Llama 3's rule written out in double: wavelength above original/low divided by factor, below original/high kept, smooth between.
        var rope = new RotaryParameters(500000, "llama3", 8, 1, 4, 64);
        using var llama3 = rope.InverseFrequencies(32);
        var inv = new RotaryParameters(500000).InverseFrequencies(32).data<float>().ToArray();
        var expected = inv.Select(f =>
        {
            double w = 2 * Math.PI / f;
            if (w < 64 / 4.0) return (double)f;
            if (w > 64 / 1.0) return f / 8.0;
            double s = (64 / w - 1) / (4 - 1);
            return (1 - s) * f / 8 + s * f;
        }).ToArray();
        var got = llama3.data<float>().ToArray();
        Assert.Contains(expected.Zip(inv), p => p.First == p.Second);          // some kept
        Assert.Contains(expected.Zip(inv), p => Math.Abs(p.First * 8 - p.Second) < 1e-12 * p.Second); // some divided
        Assert.Contains(expected.Zip(inv), p => p.First != p.Second && Math.Abs(p.First * 8 - p.Second) > 1e-6 * p.Second); // some smoothed
        for (int i = 0; i < got.Length; i++) Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-6 * expected[i], $"inv_freq[{i}] {got[i]} vs {expected[i]}");
    }

    [Fact]
    public void LinearRopeScalingChangesTheLogits()
    {
        using var tmp = new TempDir();
        string dir = tmp.CopyModel(Family("tiny-llama3"));
        File.WriteAllText(Path.Combine(dir, "config.json"), RopeVariant(c => c["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 2.0 }));
        double scaled = ReferenceError(ModelLoader.Load(dir), Family("tiny-llama3"));
        File.WriteAllText(Path.Combine(dir, "config.json"), RopeVariant(_ => { }));
        double plain = ReferenceError(ModelLoader.Load(dir), Family("tiny-llama3"));
        Assert.True(Math.Abs(scaled - plain) > 1e-4, $"linear factor 2 gives {scaled:E3}, unscaled {plain:E3}");
    }

    // ---- the other fields that change the computation ----

    private static string Edit(string family, Action<JsonObject> edit)
    {
        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(Family(family), "config.json")))!.AsObject();
        edit(c);
        return c.ToJsonString();
    }

    public static TheoryData<string, string, string> RefusedFields => new()
    {
        { Edit("tiny-llama3", c => c["hidden_act"] = "gelu"), "hidden_act", "'gelu' (supported: silu)" },
        { Edit("tiny-mistral", c => c["hidden_act"] = "relu"), "hidden_act", "'relu'" },
        { Edit("tiny-mistral", c => c["attention_bias"] = true), "attention_bias", "no biases" },
        { Edit("tiny-mistral", c => c["mlp_bias"] = true), "mlp_bias", "no biases" },
        { Edit("tiny-mistral", c => c.Remove("num_key_value_heads")), "num_key_value_heads", "missing" },
        { Edit("tiny-qwen2", c => c["use_sliding_window"] = true), "use_sliding_window", "not supported" },
        { Edit("tiny-qwen2", c => c["layer_types"] = new JsonArray("full_attention", "sliding_attention")), "layer_types[1]", "'sliding_attention'" },
        { Edit("tiny-qwen2", c => c["attention_bias"] = false), "attention_bias", "always has q/k/v biases" },
        { Edit("tiny-qwen2", c => c["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 4.0 }), "rope_scaling.type", "'yarn'" },
        { Edit("tiny-qwen3", c => c["use_sliding_window"] = true), "use_sliding_window", "not supported" },
        { Edit("tiny-qwen3", c => c.Remove("head_dim")), "head_dim", "missing" },
        { Edit("tiny-qwen3", c => c["mlp_bias"] = true), "mlp_bias", "no biases" },
    };

    [Theory]
    [MemberData(nameof(RefusedFields))]
    public void FieldsThatWouldChangeTheComputationAreRefusedByName(string config, string field, string problem)
    {
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(config, "/m/config.json"));
        Assert.StartsWith("/m/config.json: ", e.Message);
        Assert.Contains($"'{field}'", e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void HonouredFieldsShapeTheModel()
    {
        PretrainedModel Build(string config) => ModelLoader.Build(ModelConfig.Parse(config, "config.json"), new RandomTensorSource(1, ScalarType.Float32));
        Tensor? Bias(PretrainedModel m, string name) => m.GetProjection(name).Bias;

        // llama: attention_bias puts a bias on q, k, v and o; mlp_bias on the MLP; head_dim sets the q width.
        var llama = Build(Edit("tiny-llama3", c => { c["attention_bias"] = true; c["mlp_bias"] = true; c["head_dim"] = 8; }));
        foreach (var p in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) Assert.NotNull(Bias(llama, $"model.layers.1.self_attn.{p}"));
        Assert.NotNull(Bias(llama, "model.layers.0.mlp.down_proj"));
        Assert.Equal(4 * 8, llama.GetProjection("model.layers.0.self_attn.q_proj").OutFeatures);
        Assert.Null(Bias(ModelLoader.Load(Family("tiny-llama3")), "model.layers.0.self_attn.q_proj"));

        // qwen2: bias on q, k, v, not o.
        var qwen2 = ModelLoader.Load(Family("tiny-qwen2"));
        foreach (var p in new[] { "q_proj", "k_proj", "v_proj" }) Assert.NotNull(Bias(qwen2, $"model.layers.0.self_attn.{p}"));
        Assert.Null(Bias(qwen2, "model.layers.0.self_attn.o_proj"));

        // qwen3: head_dim 32 ≠ 64 / 4, q_norm and k_norm of [head_dim]; attention_bias true biases q, k, v and o.
        var qwen3 = ModelLoader.Load(Family("tiny-qwen3"));
        var names = qwen3.ParametersByName();
        Assert.Equal(new long[] { 32 }, names["model.layers.1.self_attn.q_norm.weight"].shape);
        Assert.Equal(new long[] { 32 }, names["model.layers.1.self_attn.k_norm.weight"].shape);
        Assert.Equal(4 * 32, qwen3.GetProjection("model.layers.0.self_attn.q_proj").OutFeatures);
        Assert.Equal(2 * 32, qwen3.GetProjection("model.layers.0.self_attn.k_proj").OutFeatures);
        var biased = Build(Edit("tiny-qwen3", c => c["attention_bias"] = true));
        Assert.NotNull(Bias(biased, "model.layers.0.self_attn.o_proj"));

        // mistral: sliding_window absent is transformers' 4096, null is none.
        Assert.Equal(6, ((MistralConfig)ModelConfig.Parse(Edit("tiny-mistral", _ => { }), "c")).SlidingWindow);
        Assert.Equal(MistralConfig.DefaultSlidingWindow, ((MistralConfig)ModelConfig.Parse(Edit("tiny-mistral", c => c.Remove("sliding_window")), "c")).SlidingWindow);
        Assert.Null(((MistralConfig)ModelConfig.Parse(Edit("tiny-mistral", c => c["sliding_window"] = null), "c")).SlidingWindow);
    }

    [Fact]
    public void MistralsWindowIsWhatItsReferenceNeeds()
    {
        // The same weights without the window (sliding_window null) miss the reference: the window is computed, not ignored.
        using var tmp = new TempDir();
        string dir = tmp.CopyModel(Family("tiny-mistral"));
        File.WriteAllText(Path.Combine(dir, "config.json"), Edit("tiny-mistral", c => c["sliding_window"] = null));
        double rel = ReferenceError(ModelLoader.Load(dir), Family("tiny-mistral"));
        Assert.True(rel > 1e-3, $"relative error {rel:E3}");
        File.WriteAllText(Path.Combine(dir, "config.json"), Edit("tiny-mistral", c => c["sliding_window"] = 16)); // ≥ the 16 tokens: no effect
        Assert.True(Math.Abs(ReferenceError(ModelLoader.Load(dir), Family("tiny-mistral")) - rel) < 1e-9);
    }

    // ---- GPT-2's attention flags ----

    /// <summary>The same seeded weights in every dtype (drawn in float64, then cast).</summary>
    private static PretrainedModel Gpt2(bool scaleWeights = true, bool byInverseLayer = false, bool upcast = false, ScalarType dtype = ScalarType.Float64) =>
        ModelLoader.Build(new Gpt2Config(VocabSize: 13, NPositions: 8, NEmbd: 8, NLayer: 3, NHead: 2, NInner: 16, LayerNormEpsilon: 1e-5,
            Activation: "gelu_new", TieWordEmbeddings: true, ScaleAttnWeights: scaleWeights, ScaleAttnByInverseLayerIdx: byInverseLayer,
            ReorderAndUpcastAttn: upcast), new CastSource(new RandomTensorSource(11, ScalarType.Float64, std: 0.6), dtype));

    private sealed class CastSource(TensorSource inner, ScalarType dtype) : TensorSource(dtype)
    {
        public override Tensor Take(string name, params long[] shape) => inner.Take(name, shape).to_type(dtype);
        public override Tensor TakeOnes(string name, params long[] shape) => inner.TakeOnes(name, shape).to_type(dtype);
        public override Tensor TakeZeros(string name, params long[] shape) => inner.TakeZeros(name, shape).to_type(dtype);
    }

    /// <summary>
    /// The known transformation: scaling the scores of layer l by c is scaling its queries by c, that is the q columns
    /// (the first n_embd) of c_attn's weight and bias. Applied to a default-scaled model, it must give the flagged one.
    /// </summary>
    private static PretrainedModel ScaledQueries(Func<int, double> factor)
    {
        var m = Gpt2();
        using var _ = torch.no_grad();
        for (int l = 0; l < 3; l++)
        {
            var p = m.ParametersByName();
            p[$"transformer.h.{l}.attn.c_attn.weight"].narrow(1, 0, 8).MulScalar_(factor(l));
            p[$"transformer.h.{l}.attn.c_attn.bias"].narrow(0, 0, 8).MulScalar_(factor(l));
        }
        return m;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, true)]
    [InlineData(false, true)]
    public void Gpt2AttentionScalingFlagsScaleTheScoresAsTransformersDoes(bool scaleWeights, bool byInverseLayer)
    {
        double sqrtHd = Math.Sqrt(4);
        var flagged = Gpt2(scaleWeights, byInverseLayer);
        var reference = ScaledQueries(l => (scaleWeights ? 1 : sqrtHd) / (byInverseLayer ? l + 1 : 1));
        var plain = Gpt2();
        using var ids = torch.randint(0, 13, [3, 8], dtype: ScalarType.Int64, generator: new Generator(2));
        foreach (bool grad in new[] { false, true })
        {
            using var mode = torch.set_grad_enabled(grad);
            using var a = flagged.call(ids);
            using var b = reference.call(ids);
            using var c = plain.call(ids);
            Assert.True(TensorAssert.RelativeError(a, b) <= 1e-12, $"grad {grad}: {TensorAssert.RelativeError(a, b):E3}");
            Assert.True(TensorAssert.RelativeError(a, c) >= 1e-3, $"grad {grad}: the flags changed nothing ({TensorAssert.RelativeError(a, c):E3})");
        }
    }

    [Fact]
    public void Gpt2FlagsAreReadFromConfigJson()
    {
        string config = File.ReadAllText(Path.Combine(Repo.Gpt2, "config.json"));
        var c = JsonNode.Parse(config)!.AsObject();
        var plain = (Gpt2Config)ModelConfig.Parse(config, "config.json");
        Assert.True(plain.ScaleAttnWeights && !plain.ScaleAttnByInverseLayerIdx && !plain.ReorderAndUpcastAttn);
        c["scale_attn_weights"] = false;
        c["scale_attn_by_inverse_layer_idx"] = true;
        c["reorder_and_upcast_attn"] = true;
        var flagged = (Gpt2Config)ModelConfig.Parse(c.ToJsonString(), "config.json");
        Assert.True(!flagged.ScaleAttnWeights && flagged.ScaleAttnByInverseLayerIdx && flagged.ReorderAndUpcastAttn);
        c["add_cross_attention"] = true;
        var e = Assert.Throws<BadInputException>(() => ModelConfig.Parse(c.ToJsonString(), "/m/config.json"));
        Assert.StartsWith("/m/config.json: field 'add_cross_attention'", e.Message);
    }

    [Fact]
    public void ReorderAndUpcastAttnKeepsTheScoresInFloat32()
    {
        // In float64 it is the same function; in bfloat16 the float32 softmax lands nearer the float64 model than bfloat16's own.
        using var ids = torch.randint(0, 13, [3, 8], dtype: ScalarType.Int64, generator: new Generator(2));
        using var _ = torch.no_grad();
        using var exact = Gpt2().call(ids);
        Assert.True(TensorAssert.RelativeError(Gpt2(upcast: true).call(ids), exact) <= 1e-12);
        using var upcast = Gpt2(upcast: true, dtype: ScalarType.BFloat16).call(ids);
        Assert.Equal(ScalarType.BFloat16, upcast.dtype);
        Assert.True(TensorAssert.RelativeError(upcast, Gpt2(dtype: ScalarType.BFloat16).call(ids)) > 0); // a different computation
        Assert.True(TensorAssert.RelativeError(upcast, exact) <= 5e-2, $"{TensorAssert.RelativeError(upcast, exact):E3}");
    }

    // ---- every command on every family ----

    [Theory]
    [MemberData(nameof(Families))]
    public void CompressGeoThenEvalWorksOnEveryFamilyAndTheFolderReloads(string family)
    {
        using var tmp = new TempDir();
        string outDir = tmp.File("compressed"), data = TinyModelFolders.Text(tmp, 60_000);
        var compress = GeoshareProcess.Run("compress", "--model", Family(family), "--data", data, "--method", "geo", "--ratio", "0.3",
            "--calib-windows", "8", "--calib-stride", "1", "--out", outDir);
        Assert.True(compress.ExitCode == 0, compress.Stderr);
        var eval = GeoshareProcess.Run("eval", "--model", outDir, "--data", data, "--limit", "4", "--json", tmp.File("eval.json"));
        Assert.True(eval.ExitCode == 0, eval.Stderr);
        var json = JsonNode.Parse(File.ReadAllText(tmp.File("eval.json")))!;
        double ppl = json["perplexity"]!.GetValue<double>();
        output.WriteLine($"{family}: geo 0.3 → perplexity {ppl:F4} on 4 windows, {json["parameters"]} parameters");
        Assert.True(double.IsFinite(ppl) && ppl > 1);

        var dense = ModelLoader.Load(Family(family));
        var compressed = ModelFolder.Load(outDir);
        Assert.Equal(dense.Config.ModelType, compressed.Config.ModelType);
        Assert.True(compressed.ParameterCount() < dense.ParameterCount());
        var plan = SharingPlan.Load(Path.Combine(outDir, CompressedCheckpoint.PlanFile));
        Assert.Equal(dense.ProjectionTypes.Order(), plan.Types.Keys.Order());
        // Biases stay with their layers, as in the dense model.
        foreach (var site in dense.Sites)
        {
            var b = dense.GetProjection(site).Bias;
            var cb = compressed.GetProjection(site.Name).Bias;
            Assert.Equal(b is null, cb is null);
            if (b is not null) Assert.True(b.eq(cb!).all().item<bool>(), $"{site.Name}.bias changed");
        }
        // The reloaded folder computes what it evaluated: its logits are finite and near the dense model's scale.
        var refs = SafetensorsFile.Open(Path.Combine(Family(family), "reference_logits.safetensors"));
        using var ids = refs.Read("input_ids");
        using var _ = torch.no_grad();
        Assert.True(torch.isfinite(compressed.call(ids)).all().item<bool>());
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void AnalyzeAndPlanRunOnEveryFamily(string family)
    {
        // q_proj and up_proj have over 1024 weights, so analyze runs Lanczos, not a dense Hessian (1024+ products).
        using var tmp = new TempDir();
        string data = TinyModelFolders.Text(tmp, 30_000);
        var analyze = GeoshareProcess.Run("analyze", "--model", Family(family), "--data", data, "--windows", "2", "--top", "2",
            "--params", "model.layers.0.self_attn.q_proj.weight,model.layers.1.mlp.up_proj.weight", "--plots", tmp.File("plots"), "--json", tmp.File("a.json"));
        Assert.True(analyze.ExitCode == 0, analyze.Stderr);
        Assert.Equal(2, JsonNode.Parse(File.ReadAllText(tmp.File("a.json")))!["blocks"]!.AsArray().Count);
        var plan = GeoshareProcess.Run("plan", "--model", Family(family), "--data", data, "--ratio", "0.3", "--calib-windows", "4", "--calib-stride", "1",
            "--out", tmp.File("plan.json"));
        Assert.True(plan.ExitCode == 0, plan.Stderr);
        var compress = GeoshareProcess.Run("compress", "--model", Family(family), "--data", data, "--plan", tmp.File("plan.json"),
            "--calib-windows", "4", "--calib-stride", "1", "--out", tmp.File("c"));
        Assert.True(compress.ExitCode == 0, compress.Stderr);
        Assert.True(ModelFolder.Load(tmp.File("c")).ParameterCount() < ModelLoader.Load(Family(family)).ParameterCount());
    }
}
