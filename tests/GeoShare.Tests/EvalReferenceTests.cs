using System.Text.Json;
using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;

namespace GeoShare.Tests;

/// <summary>The whole evaluation protocol on the bundled models against the numbers transformers gave.</summary>
public class EvalReferenceTests
{
    private static JsonElement References() =>
        JsonDocument.Parse(File.ReadAllText(Repo.Reference("references.json"))).RootElement;

    [Theory]
    [InlineData("gpt2", "gpt2-kjv-brown")]
    [InlineData("llama", "llama-kjv-brown")]
    public void TestPerplexityWithinOneHundredthOfAPercent(string key, string model)
    {
        var expected = References().GetProperty(key).GetProperty("test");
        var m = ModelLoader.Load(Repo.Model(model));
        var windows = TokenWindows.FromFile(Repo.Corpus("test"), ByteLevelBpeTokenizer.Load(Repo.Model(model)), 256);
        var score = Evaluator.Perplexity(m, windows);
        Assert.Equal(expected.GetProperty("predicted_tokens").GetInt64(), score.PredictedTokens);
        double refPpl = expected.GetProperty("perplexity").GetDouble();
        Assert.True(Math.Abs(score.Perplexity - refPpl) / refPpl <= 1e-4, $"perplexity {score.Perplexity} vs {refPpl}");
    }

    [Fact]
    public void VitTestAccuracy()
    {
        var m = ModelLoader.Load(Repo.Vit);
        var score = Evaluator.Accuracy(m, ImageDataset.LoadFashionMnist(Repo.FashionMnist, "t10k"), ImagePreprocessor.Load(Repo.Vit));
        Assert.Equal(10_000, score.Images);
        Assert.InRange(score.Accuracy, 0.8517 - 0.0005, 0.8517 + 0.0005);
    }
}
