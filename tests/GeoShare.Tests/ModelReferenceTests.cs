using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>Logits of the bundled checkpoints against those Hugging Face transformers computed.</summary>
public class ModelReferenceTests
{
    [Theory]
    [InlineData("gpt2-kjv-brown", "gpt2_logits.safetensors")]
    [InlineData("llama-kjv-brown", "llama_logits.safetensors")]
    public void LanguageModelLogitsMatchTransformers(string model, string reference)
    {
        var refs = SafetensorsFile.Open(Repo.Reference(reference));
        using var ids = refs.Read("input_ids");
        using var expected = refs.Read("logits", ScalarType.Float32);
        var m = ModelLoader.Load(Repo.Model(model));
        using var _ = torch.no_grad();
        using var logits = m.call(ids);
        Assert.Equal(expected.shape, logits.shape);
        double rel = TensorAssert.RelativeError(logits, expected);
        Assert.True(rel <= 1e-4, $"relative error {rel:E3}");
    }

    [Fact]
    public void VitLogitsAndPreprocessingMatchTransformers()
    {
        var refs = SafetensorsFile.Open(Repo.Reference("vit_logits.safetensors"));
        using var pixels = refs.Read("pixel_values", ScalarType.Float32);
        using var expected = refs.Read("logits", ScalarType.Float32);
        using var labels = refs.Read("labels");
        var m = ModelLoader.Load(Repo.Vit);
        using var _ = torch.no_grad();
        using var logits = m.call(pixels);
        double rel = TensorAssert.RelativeError(logits, expected);
        Assert.True(rel <= 1e-4, $"relative error {rel:E3}");

        // Our reader and normalisation give the same pixel values for the first 16 test images.
        var test = ImageDataset.LoadFashionMnist(Repo.FashionMnist, "t10k");
        var (ours, ourLabels) = test.Batch(Enumerable.Range(0, 16).ToArray(), ImagePreprocessor.Load(Repo.Vit));
        Assert.True(TensorAssert.RelativeError(ours, pixels) <= 1e-6);
        Assert.Equal(labels.data<long>().ToArray(), ourLabels.data<long>().ToArray());
    }

    [Fact]
    public void Float64LoadingGivesTheSameLogitsAndParameterNamesAreHuggingFaceKeys()
    {
        var refs = SafetensorsFile.Open(Repo.Reference("gpt2_logits.safetensors"));
        using var ids = refs.Read("input_ids");
        using var expected = refs.Read("logits", ScalarType.Float32);
        var m = ModelLoader.Load(Repo.Gpt2, ScalarType.Float64);
        using var _ = torch.no_grad();
        using var logits = m.call(ids);
        Assert.Equal(ScalarType.Float64, logits.dtype);
        Assert.True(TensorAssert.RelativeError(logits, expected) <= 1e-4);

        var names = m.ParametersByName();
        Assert.Equal(new long[] { 256, 1024 }, names["transformer.h.5.mlp.c_fc.weight"].shape);
        Assert.Contains("transformer.h.11.ln_2.weight", names.Keys);
        Assert.Equal(11_640_320, m.ParameterCount());
        Assert.Equal(48, m.Sites.Count);
    }

    [Fact]
    public void LlamaParameterCountAndTiedHeadAreOneStorage()
    {
        var m = ModelLoader.Load(Repo.Llama);
        Assert.Equal(9_181_440, m.ParameterCount());
        var p = m.ParametersByName();
        var head = (DenseLinear)m.FindModule("lm_head");
        Assert.Equal(TensorStorage.Pointer(p["model.embed_tokens.weight"]), TensorStorage.Pointer(head.Weight));
        Assert.DoesNotContain("lm_head.weight", p.Keys); // listed once, under its first name, as PyTorch does
        Assert.Equal(new long[] { 128, 256 }, p["model.layers.3.self_attn.k_proj.weight"].shape);
        Assert.Equal(84, m.Sites.Count);
    }
}
