using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Real architectures at toy sizes (a few thousand parameters), with seeded random weights, float64.</summary>
public static class TinyModels
{
    public static PretrainedModel Gpt2(long seed = 1, ScalarType dtype = ScalarType.Float64) =>
        ModelLoader.Build(new Gpt2Config(VocabSize: 13, NPositions: 8, NEmbd: 8, NLayer: 2, NHead: 2, NInner: 16,
            LayerNormEpsilon: 1e-5, Activation: "gelu_new", TieWordEmbeddings: true), new RandomTensorSource(seed, dtype));

    /// <summary>A tiny GPT-2 with more layers, for searches over colorings.</summary>
    public static PretrainedModel Gpt2Deep(int layers, long seed = 4, ScalarType dtype = ScalarType.Float64) =>
        ModelLoader.Build(new Gpt2Config(VocabSize: 13, NPositions: 8, NEmbd: 8, NLayer: layers, NHead: 2, NInner: 16,
            LayerNormEpsilon: 1e-5, Activation: "gelu_new", TieWordEmbeddings: true), new RandomTensorSource(seed, dtype));

    public static PretrainedModel Llama(long seed = 2, ScalarType dtype = ScalarType.Float64) =>
        ModelLoader.Build(new LlamaConfig(VocabSize: 11, Hidden: 8, IntermediateSize: 12, Layers: 2, NumAttentionHeads: 2,
            NumKeyValueHeads: 1, HeadDim: 4, RmsNormEps: 1e-5, Rope: new RotaryParameters(10000), TieWordEmbeddings: false, AttentionBias: false,
            MlpBias: false, MaxPositionEmbeddings: 16), new RandomTensorSource(seed, dtype));

    public static PretrainedModel Vit(long seed = 3, ScalarType dtype = ScalarType.Float64) =>
        ModelLoader.Build(new VitConfig(ImageSize: 4, PatchSize: 2, NumChannels: 1, Hidden: 8, Layers: 2, NumAttentionHeads: 2,
            IntermediateSize: 12, LayerNormEps: 1e-12, QkvBias: true, HiddenAct: "gelu", Labels: ["a", "b", "c"]), new RandomTensorSource(seed, dtype));

    /// <summary>
    /// The planner's inputs on a tiny language model: the grams of 32 random-token calibration windows of 8 and a 4-window
    /// token batch for the curvature (the same every call).
    /// </summary>
    public static (ActivationGrams Grams, LanguageModelBatch Batch) RandomCalibration(PretrainedModel model)
    {
        var rng = new Random(11);
        var windows = TokenWindows.FromIds("random", Enumerable.Range(0, 8 * 32).Select(_ => rng.Next(13)).ToArray(), 8);
        var grams = ActivationGrams.Collect(model, CalibrationSet.FromWindows(windows, windows.Select(32, 1)), model.Sites);
        return (grams, TokenBatch(model, windows: 4));
    }

    public static LanguageModelBatch TokenBatch(PretrainedModel model, int windows = 3, int length = 8, long seed = 5)
    {
        int vocab = model.Config is ICausalLanguageModelConfig lm ? lm.VocabSize : throw new ArgumentException($"{model.Config.ModelType} is not a language model");
        var ids = torch.randint(0, vocab, [windows, length], dtype: ScalarType.Int64, generator: new Generator((ulong)seed));
        return new LanguageModelBatch(ids, "random tokens");
    }

    public static ClassificationBatch ImageBatch(int images = 6, long seed = 6, ScalarType dtype = ScalarType.Float64)
    {
        var gen = new Generator((ulong)seed);
        return new ClassificationBatch(torch.randn([images, 1, 4, 4], dtype: dtype, generator: gen),
            torch.randint(0, 3, [images], dtype: ScalarType.Int64, generator: gen), "random images");
    }
}
