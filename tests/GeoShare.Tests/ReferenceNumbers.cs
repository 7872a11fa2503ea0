namespace GeoShare.Tests;

/// <summary>assets/references/references.json: what Hugging Face transformers gave for the bundled models and tokenizer.</summary>
public sealed record ReferenceNumbers(IReadOnlyList<TokenizerReference> Tokenizer, LanguageModelReference Gpt2, LanguageModelReference Llama,
    VitReference Vit)
{
    public static ReferenceNumbers Load() => JsonOutput.Read<ReferenceNumbers>(Repo.Reference("references.json"));

    /// <summary>The language model under its key in the file ("gpt2", "llama").</summary>
    public LanguageModelReference LanguageModel(string key) => key switch
    {
        "gpt2" => Gpt2,
        "llama" => Llama,
        _ => throw new ArgumentException($"no language-model reference '{key}'"),
    };
}

public sealed record TokenizerReference(string Text, int[] Ids);

public sealed record LanguageModelReference(SplitReference Valid, SplitReference Test);

public sealed record SplitReference(double MeanNll, double Perplexity, long PredictedTokens);

public sealed record VitReference(double TestAccuracy, int TestImages);
