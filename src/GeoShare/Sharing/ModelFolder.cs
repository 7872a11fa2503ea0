using GeoShare.Models;
using static TorchSharp.torch;

namespace GeoShare.Sharing;

/// <summary>Loads any model folder: a GeoShare-compressed one (it holds a sharing plan) or a dense Hugging Face one.</summary>
public static class ModelFolder
{
    public static PretrainedModel Load(string dir, ScalarType dtype = ScalarType.Float32) =>
        CompressedCheckpoint.IsCompressed(dir) ? CompressedCheckpoint.Load(dir, dtype) : ModelLoader.Load(dir, dtype);
}
