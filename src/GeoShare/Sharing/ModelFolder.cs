using GeoShare.Models;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>Loads any model folder: a GeoShare-compressed one (it holds a sharing plan) or a dense Hugging Face one.</summary>
public static class ModelFolder
{
    public static PretrainedModel Load(string dir, ScalarType dtype = ScalarType.Float32)
    {
        if (CompressedCheckpoint.IsCompressed(dir)) return CompressedCheckpoint.Load(dir, dtype);
        CompressedCheckpoint.RefuseIfPlanMissing(dir);
        return ModelLoader.Load(dir, dtype);
    }
}
