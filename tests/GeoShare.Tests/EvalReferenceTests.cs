using GeoShare.Data;
using GeoShare.Evaluation;
using GeoShare.Models;

namespace GeoShare.Tests;

/// <summary>The whole evaluation protocol on the bundled models against the numbers transformers gave.</summary>
public class EvalReferenceTests
{
    [Theory]
    [InlineData("gpt2", "gpt2-kjv-brown")]
    [InlineData("llama", "llama-kjv-brown")]
    public void TestPerplexityWithinOneHundredthOfAPercent(string key, string model)
    {
        var expected = ReferenceNumbers.Load().LanguageModel(key).Test;
        var m = ModelLoader.Load(Repo.Model(model));
        var windows = TokenWindows.FromFile(Repo.Corpus("test"), ByteLevelBpeTokenizer.Load(Repo.Model(model)), 256);
        var score = Evaluator.Perplexity(m, windows);
        Assert.Equal(expected.PredictedTokens, score.PredictedTokens);
        double refPpl = expected.Perplexity;
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
