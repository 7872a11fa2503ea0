using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Models;

/// <summary>Loads a Hugging Face model folder into the matching architecture.</summary>
public static class ModelLoader
{
    // Buffers some checkpoints carry that these models compute instead.
    private static readonly string[] IgnoredSuffixes = [".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"];

    public static PretrainedModel Load(string dir, ScalarType dtype = ScalarType.Float32)
    {
        if (Sharing.CompressedCheckpoint.IsCompressed(dir)) return Sharing.CompressedCheckpoint.Load(dir, dtype);
        var checkpoint = Checkpoint.Open(dir);
        var src = new CheckpointTensorSource(checkpoint, dtype);
        var model = Build(checkpoint.Config, src);
        var unexpected = checkpoint.TensorNames
            .Where(n => !src.Used.Contains(n) && !IgnoredSuffixes.Any(n.EndsWith) && !(n == "lm_head.weight" && IsTied(checkpoint.Config)))
            .Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw BadInputException.For(dir, $"checkpoint holds {unexpected.Count} tensor(s) config.json does not account for, e.g. '{unexpected[0]}'");
        return model;
    }

    /// <summary>Builds the architecture of <paramref name="config"/> from any tensor source (checkpoint or random).</summary>
    public static PretrainedModel Build(ModelConfig config, TensorSource src)
    {
        using var _ = torch.no_grad();
        PretrainedModel model = config switch
        {
            Gpt2Config c => new Gpt2LMHeadModel(c, src),
            LlamaConfig c => new LlamaForCausalLM(c, src),
            VitConfig c => new VitForImageClassification(c, src),
            _ => throw new ArgumentException($"no architecture for {config.ModelType}"),
        };
        model.eval();
        foreach (var p in model.parameters()) p.requires_grad = false;
        return model;
    }

    private static bool IsTied(ModelConfig c) => c switch
    {
        Gpt2Config g => g.TieWordEmbeddings,
        LlamaConfig l => l.TieWordEmbeddings,
        _ => false,
    };
}
