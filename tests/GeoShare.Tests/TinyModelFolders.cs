using System.Globalization;
using System.Text.Json.Nodes;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>
/// Hugging Face folders of toy-sized GPT-2s (seeded random weights, the bundled GPT-2's tokenizer), and a short text
/// file, so that CLI tests run the real commands in seconds.
/// </summary>
public static class TinyModelFolders
{
    /// <summary>
    /// A GPT-2 of 256 positions and n_embd 16 whose tokenizer is the bundled one without its merges: one token per
    /// byte (257 tokens with end-of-text), so that the logits stay small.
    /// </summary>
    public static string Gpt2(TempDir tmp, int layers, string name = "tiny-gpt2", long seed = 21)
    {
        string dir = tmp.File(name);
        Directory.CreateDirectory(dir);
        var tokenizer = JsonNode.Parse(File.ReadAllText(Path.Combine(Repo.Gpt2, "tokenizer.json")))!;
        var vocab = tokenizer["model"]!["vocab"]!.AsObject();
        foreach (var token in vocab.Where(kv => kv.Value!.GetValue<int>() > 256).Select(kv => kv.Key).ToList()) vocab.Remove(token);
        tokenizer["model"]!["merges"] = new JsonArray();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizer.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "config.json"), string.Create(CultureInfo.InvariantCulture,
            $$"""{"model_type": "gpt2", "vocab_size": 257, "n_positions": 256, "n_embd": 16, "n_layer": {{layers}}, "n_head": 2, "n_inner": 32, "layer_norm_epsilon": 1e-05, "activation_function": "gelu_new", "tie_word_embeddings": true}"""));
        var model = ModelLoader.Build(ModelConfig.Load(dir), new RandomTensorSource(seed, ScalarType.Float32));
        var tensors = model.ParametersByName().Where(p => p.Key != "lm_head.weight") // tied to transformer.wte.weight
            .OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => (p.Key, (Tensor)p.Value)).ToList();
        SafetensorsFile.Write(Path.Combine(dir, Checkpoint.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        model.Dispose();
        return dir;
    }

    /// <summary>The first <paramref name="bytes"/> of the validation corpus (one token per byte: 40 kB are 156 windows of 256 tokens).</summary>
    public static string Text(TempDir tmp, int bytes = 40_000, string name = "small.txt")
    {
        string text = File.ReadAllText(Repo.Corpus("valid"));
        string path = tmp.File(name);
        File.WriteAllText(path, text[..Math.Min(bytes, text.Length)]);
        return path;
    }
}
