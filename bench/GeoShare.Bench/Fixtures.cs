using System.Globalization;
using System.Text.Json.Nodes;
using GeoShare;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// Random-weight Hugging Face checkpoints of real shapes, for timing and memory only (bench/scale.md): normal(0, 0.02)
/// matrices (Hugging Face's initializer_range), norm weights near 1, small biases; seeded, so the same name and seed
/// give the same bytes. The tokenizer files are the bundled model's (8,192 tokens), so eval, plan and compress run on them.
/// </summary>
internal static class Fixtures
{
    public sealed record Shape(string Name, string Source, string Dtype, string Config, string Description);

    private static string Gpt2Config(int layers, int width, int heads) => string.Create(CultureInfo.InvariantCulture,
        $$"""{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 8192, "n_positions": 1024, "n_embd": {{width}}, "n_layer": {{layers}}, "n_head": {{heads}}, "n_inner": null, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new", "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0}""");

    private static string LlamaConfig(int layers, int width, int ff, int heads, int kvHeads) => string.Create(CultureInfo.InvariantCulture,
        $$"""{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 8192, "hidden_size": {{width}}, "intermediate_size": {{ff}}, "num_hidden_layers": {{layers}}, "num_attention_heads": {{heads}}, "num_key_value_heads": {{kvHeads}}, "head_dim": {{width / heads}}, "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "attention_bias": false, "mlp_bias": false, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 0}""");

    public static readonly Shape[] All =
    [
        new("gpt2-124m", "assets/models/gpt2-kjv-brown", "float16", Gpt2Config(12, 768, 12), "GPT-2 124M shape: 12 × d768, 12 heads, 8k vocabulary, F16"),
        new("llama-1b", "assets/models/llama-kjv-brown", "bfloat16", LlamaConfig(16, 2048, 8192, 32, 8), "LLaMA ~1B: 16 × d2048, ff 8192, 32/8 heads, 8k vocabulary, BF16"),
        new("llama-32x1024", "assets/models/llama-kjv-brown", "bfloat16", LlamaConfig(32, 1024, 4096, 16, 4), "LLaMA 32 × d1024, ff 4096, 16/4 heads, 8k vocabulary, BF16"),
        // Small points for the growth fits (depth and width).
        new("gpt2-24x384", "assets/models/gpt2-kjv-brown", "float16", Gpt2Config(24, 384, 6), "GPT-2 24 × d384"),
        new("gpt2-12x384", "assets/models/gpt2-kjv-brown", "float16", Gpt2Config(12, 384, 6), "GPT-2 12 × d384"),
        new("gpt2-12x512", "assets/models/gpt2-kjv-brown", "float16", Gpt2Config(12, 512, 8), "GPT-2 12 × d512"),
    ];

    /// <summary>`fixture NAME OUT_DIR [SEED]`: writes one fixture folder (atomically: OUT_DIR.tmp, then renamed).</summary>
    public static int Write(string name, string outDir, long seed)
    {
        var shape = All.FirstOrDefault(s => s.Name == name);
        if (shape is null)
        {
            Console.Error.WriteLine($"fixture: unknown name '{name}' (names: {string.Join(", ", All.Select(s => s.Name))})");
            return 2;
        }
        string tmp = outDir.TrimEnd('/') + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        Directory.CreateDirectory(tmp);
        var config = JsonNode.Parse(shape.Config)!;
        config["dtype"] = shape.Dtype;
        File.WriteAllText(Path.Combine(tmp, "config.json"), config.ToJsonString(new() { WriteIndented = true }));
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt" })
            if (File.Exists(Path.Combine(shape.Source, f))) File.Copy(Path.Combine(shape.Source, f), Path.Combine(tmp, f));
        var dtype = shape.Dtype == "bfloat16" ? ScalarType.BFloat16 : ScalarType.Float16;
        using (var scope = torch.NewDisposeScope())
        {
            var model = ModelLoader.Build(ModelConfig.Load(tmp), new RandomTensorSource(seed, ScalarType.Float32, std: 0.02).Into(dtype));
            var tied = model.Architecture.TiedKeys(model.Config);
            var tensors = model.ParametersByName().Where(p => !tied.ContainsKey(p.Key))
                .OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => (p.Key, (Tensor)p.Value)).ToList();
            long parameters = tensors.Sum(t => t.Item2.numel());
            SafetensorsFile.Write(Path.Combine(tmp, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            model.Dispose();
            Console.WriteLine($"{name}: {shape.Description}; {parameters:N0} parameters, seed {seed}");
        }
        if (Directory.Exists(outDir)) Directory.Delete(outDir, recursive: true);
        Directory.Move(tmp, outDir);
        Console.WriteLine($"wrote {outDir} ({new FileInfo(Path.Combine(outDir, Checkpoint.SingleFile)).Length:N0} bytes of weights)");
        return 0;
    }
}

/// <summary>Random float32 values stored in a half-precision dtype (one tensor at a time; the model never exists in float32).</summary>
internal sealed class CastingTensorSource(TensorSource inner, ScalarType dtype) : TensorSource(dtype)
{
    private static Tensor Cast(Tensor t, ScalarType d) { using (t) return t.to_type(d); }
    public override Tensor Take(string name, params long[] shape) => Cast(inner.Take(name, shape), DType);
    public override Tensor TakeOnes(string name, params long[] shape) => Cast(inner.TakeOnes(name, shape), DType);
    public override Tensor TakeZeros(string name, params long[] shape) => Cast(inner.TakeZeros(name, shape), DType);
}

internal static class TensorSourceExtensions
{
    public static TensorSource Into(this TensorSource s, ScalarType dtype) => new CastingTensorSource(s, dtype);
}
