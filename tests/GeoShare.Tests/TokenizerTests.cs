using GeoShare.Data;

namespace GeoShare.Tests;

public class TokenizerTests
{
    private static readonly ByteLevelBpeTokenizer Tokenizer = ByteLevelBpeTokenizer.Load(Repo.Gpt2);

    public static IEnumerable<object[]> ReferenceStrings()
    {
        foreach (var e in ReferenceNumbers.Load().Tokenizer)
            yield return [e.Text, e.Ids];
    }

    [Theory]
    [MemberData(nameof(ReferenceStrings))]
    public void EncodesTheTenReferenceStringsExactly(string text, int[] expected)
    {
        Assert.Equal(expected, Tokenizer.Encode(text));
        Assert.Equal(text, Tokenizer.Decode(expected));
    }

    [Theory]
    [InlineData("valid")]
    [InlineData("test")]
    public void EncodesTheWholeSplitExactlyAsTransformers(string split)
    {
        var bytes = File.ReadAllBytes(Repo.Reference($"ids_{split}.bin"));
        var expected = new int[bytes.Length / 2];
        for (int i = 0; i < expected.Length; i++) expected[i] = BitConverter.ToUInt16(bytes, 2 * i);
        var actual = Tokenizer.Encode(File.ReadAllText(Repo.Corpus(split)));
        Assert.Equal(expected.Length, actual.Length);
        int firstDiff = Enumerable.Range(0, actual.Length).FirstOrDefault(i => actual[i] != expected[i], -1);
        Assert.True(firstDiff < 0, $"first difference at token {firstDiff}");
    }

    [Fact]
    public void PreTokenizerKeepsLettersOutsideTheBasicPlaneTogether()
    {
        // U+1D400 (mathematical bold A) is a letter made of two UTF-16 code units.
        var pieces = ByteLevelBpeTokenizer.PreTokenize("x \U0001D400\U0001D401 y").Select(p => p.Length).ToArray();
        Assert.Equal(new[] { 1, 5, 2 }, pieces);
    }

    [Fact]
    public void BothLanguageModelsShipTheSameTokenizer()
    {
        var llama = ByteLevelBpeTokenizer.Load(Repo.Llama);
        const string text = "And God said, Let there be light: and there was light.";
        Assert.Equal(Tokenizer.Encode(text), llama.Encode(text));
        Assert.Equal(8192, Tokenizer.VocabSize);
    }
}
