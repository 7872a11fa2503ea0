using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Models;

/// <summary>Loads a dense Hugging Face model folder into the architecture its config.json names.</summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads a dense folder. A GeoShare-compressed folder is refused: it is read by
    /// <c>GeoShare.Sharing.ModelFolder.Load</c>, which loads either kind.
    /// </summary>
    public static PretrainedModel Load(string dir, ScalarType dtype = ScalarType.Float32)
    {
        if (Checkpoint.IsGeoShareCompressed(dir))
            throw BadInputException.For(dir, $"is a GeoShare-compressed model ({Checkpoint.GeoSharePlanFile}); load it with ModelFolder.Load, which reads compressed and dense folders");
        var checkpoint = Checkpoint.Open(dir);
        var src = new CheckpointTensorSource(checkpoint, dtype);
        var model = Build(checkpoint.Config, src);
        var architecture = checkpoint.Config.Architecture;
        var tied = architecture.TiedKeys(checkpoint.Config);
        var unexpected = checkpoint.TensorNames
            .Where(n => !src.Used.Contains(n) && !architecture.IgnoredSuffixes.Any(n.EndsWith) && !tied.ContainsKey(n))
            .Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0)
            throw BadInputException.For(dir, $"checkpoint holds {unexpected.Count} tensor(s) config.json does not account for, e.g. '{unexpected[0]}'");
        model.CheckpointDType = checkpoint.StorageDType;
        return model;
    }

    /// <summary>Builds the architecture of <paramref name="config"/> from any tensor source (checkpoint or random).</summary>
    public static PretrainedModel Build(ModelConfig config, TensorSource src)
    {
        using var _ = torch.no_grad();
        var model = config.Architecture.Construct(config, src);
        model.eval();
        foreach (var p in model.parameters()) p.requires_grad = false;
        return model;
    }
}
