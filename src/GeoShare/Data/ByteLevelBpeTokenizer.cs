using System.Globalization;
using System.Text;
using System.Text.Json;

namespace GeoShare.Data;

/// <summary>
/// The byte-level BPE tokenizer of GPT-2 and its descendants, read from a Hugging Face tokenizer.json
/// (model BPE, pre_tokenizer ByteLevel). Encoding follows the `tokenizers` library exactly: added tokens
/// are split out first, the rest is cut by GPT-2's pre-tokenisation pattern, each piece is mapped byte
/// by byte to printable characters and merged by rank.
/// </summary>
public sealed class ByteLevelBpeTokenizer
{
    private readonly Dictionary<string, int> _vocab;
    private readonly string[] _idToToken;
    private readonly Dictionary<(string, string), int> _mergeRank;
    private readonly List<(string Content, int Id)> _addedTokens;
    private readonly bool _addPrefixSpace;
    private readonly Dictionary<string, int[]> _cache = new();

    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    public int VocabSize => _idToToken.Length;

    /// <summary>The tokenizer.json this was read from (named in errors about what it maps).</summary>
    public string Path { get; private init; } = "tokenizer.json";

    /// <summary>Largest token id accepted from a tokenizer.json (the largest vocabularies have a few 100,000 tokens).</summary>
    public const int MaxTokenId = (1 << 22) - 1;

    private ByteLevelBpeTokenizer(Dictionary<string, int> vocab, Dictionary<(string, string), int> mergeRank,
        List<(string, int)> added, bool addPrefixSpace)
    {
        _vocab = vocab;
        _mergeRank = mergeRank;
        _addedTokens = added.OrderByDescending(a => a.Item1.Length).ToList();
        _addPrefixSpace = addPrefixSpace;
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Item2) + 1);
        _idToToken = new string[size];
        foreach (var (tok, id) in vocab) _idToToken[id] = tok;
        foreach (var (tok, id) in added) _idToToken[id] = tok;
    }

    /// <summary>Loads tokenizer.json from a model folder or a file path.</summary>
    public static ByteLevelBpeTokenizer Load(string path)
    {
        if (Directory.Exists(path)) path = System.IO.Path.Combine(path, "tokenizer.json");
        if (!FileLinks.ExistsOrIsLink(path)) throw BadInputException.For(path, "tokenizer file not found");
        FileLinks.CheckLink(path);
        int Id(JsonElement v, string token)
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long id) || id < 0 || id > MaxTokenId)
                throw BadInputException.For(path, $"token '{BoundedFile.Quote(token, 40)}' has id {BoundedFile.Quote(v.GetRawText(), 40)}; ids are integers within 0..{MaxTokenId}");
            return (int)id;
        }
        try
        {
            using var doc = JsonDocument.Parse(BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "tokenizer file"));
            var root = doc.RootElement;
            if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
                throw BadInputException.For(path, "no 'model' section");
            string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
            if (type != "BPE") throw BadInputException.For(path, $"unsupported tokenizer model '{type}' (supported: BPE)");

            bool addPrefixSpace = false;
            if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object)
            {
                string preType = pre.TryGetProperty("type", out var pt) ? pt.GetString() ?? "" : "";
                if (preType != "ByteLevel") throw BadInputException.For(path, $"unsupported pre_tokenizer '{preType}' (supported: ByteLevel)");
                if (pre.TryGetProperty("use_regex", out var ur) && ur.ValueKind == JsonValueKind.False)
                    throw BadInputException.For(path, "ByteLevel pre_tokenizer without use_regex is not supported");
                addPrefixSpace = pre.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
            }
            else throw BadInputException.For(path, "no ByteLevel pre_tokenizer (not a byte-level BPE tokenizer)");
            if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind != JsonValueKind.Null)
                throw BadInputException.For(path, "tokenizers with a normalizer are not supported");

            var vocab = new Dictionary<string, int>();
            foreach (var p in model.GetProperty("vocab").EnumerateObject()) vocab[p.Name] = Id(p.Value, p.Name);

            var ranks = new Dictionary<(string, string), int>();
            int rank = 0;
            foreach (var m in model.GetProperty("merges").EnumerateArray())
            {
                (string a, string b) pair;
                if (m.ValueKind == JsonValueKind.String)
                {
                    var s = m.GetString()!;
                    int sp = s.IndexOf(' ');
                    if (sp <= 0) throw BadInputException.For(path, $"malformed merge '{BoundedFile.Quote(s, 40)}'");
                    pair = (s[..sp], s[(sp + 1)..]);
                }
                else pair = (m[0].GetString()!, m[1].GetString()!);
                ranks.TryAdd(pair, rank++);
            }

            var added = new List<(string, int)>();
            if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
                foreach (var a in at.EnumerateArray())
                {
                    string content = a.GetProperty("content").GetString() ?? throw BadInputException.For(path, "an added token has no content");
                    if (content.Length == 0) throw BadInputException.For(path, "an added token has empty content");
                    added.Add((content, Id(a.GetProperty("id"), content)));
                }

            return new ByteLevelBpeTokenizer(vocab, ranks, added, addPrefixSpace) { Path = path };
        }
        catch (JsonException e) { throw BadInputException.For(path, $"not valid JSON ({BoundedFile.JsonProblem(e)})"); }
        catch (KeyNotFoundException) { throw BadInputException.For(path, "missing 'vocab' or 'merges' in the BPE model"); }
        catch (InvalidOperationException) { throw BadInputException.For(path, "malformed tokenizer.json"); }
    }

    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int start = 0;
        while (start < text.Length)
        {
            var (pos, token) = NextAddedToken(text, start);
            EncodeOrdinary(text.AsSpan(start, pos - start), ids);
            if (token is null) break;
            ids.Add(token.Value.Id);
            start = pos + token.Value.Content.Length;
        }
        return ids.ToArray();
    }

    public string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            if (id < 0 || id >= _idToToken.Length || _idToToken[id] is null) throw new ArgumentException($"token id {id} is outside the vocabulary");
            string tok = _idToToken[id];
            if (_addedTokens.Any(a => a.Id == id))
            {
                sb.Append(Encoding.UTF8.GetString(bytes.ToArray()));
                bytes.Clear();
                sb.Append(tok);
                continue;
            }
            foreach (char c in tok) bytes.Add(CharToByte[c]);
        }
        sb.Append(Encoding.UTF8.GetString(bytes.ToArray()));
        return sb.ToString();
    }

    private (int Pos, (string Content, int Id)? Token) NextAddedToken(string text, int from)
    {
        int best = text.Length;
        (string, int)? found = null;
        foreach (var a in _addedTokens)
        {
            int i = text.IndexOf(a.Content, from, StringComparison.Ordinal);
            if (i >= 0 && i < best) { best = i; found = a; }
        }
        return (best, found);
    }

    private void EncodeOrdinary(ReadOnlySpan<char> text, List<int> ids)
    {
        if (text.IsEmpty) return;
        string s = _addPrefixSpace && text[0] != ' ' ? " " + text.ToString() : text.ToString();
        foreach (var (start, length) in PreTokenize(s))
        {
            string piece = s.Substring(start, length);
            if (!_cache.TryGetValue(piece, out var pieceIds))
            {
                pieceIds = Bpe(ToByteChars(piece));
                if (_cache.Count < 200_000) _cache[piece] = pieceIds;
            }
            ids.AddRange(pieceIds);
        }
    }

    private static string ToByteChars(string piece)
    {
        var bytes = Encoding.UTF8.GetBytes(piece);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    private int[] Bpe(string word)
    {
        var symbols = word.Select(c => c.ToString()).ToList();
        while (symbols.Count > 1)
        {
            int bestRank = int.MaxValue, bestAt = -1;
            for (int i = 0; i < symbols.Count - 1; i++)
                if (_mergeRank.TryGetValue((symbols[i], symbols[i + 1]), out int r) && r < bestRank)
                {
                    bestRank = r;
                    bestAt = i;
                }
            if (bestAt < 0) break;
            // Merge every occurrence of the best pair, left to right.
            var (a, b) = (symbols[bestAt], symbols[bestAt + 1]);
            var merged = new List<string>(symbols.Count);
            for (int i = 0; i < symbols.Count; i++)
            {
                if (i < symbols.Count - 1 && symbols[i] == a && symbols[i + 1] == b)
                {
                    merged.Add(a + b);
                    i++;
                }
                else merged.Add(symbols[i]);
            }
            symbols = merged;
        }
        var ids = new int[symbols.Count];
        for (int i = 0; i < ids.Length; i++)
        {
            if (!_vocab.TryGetValue(symbols[i], out ids[i]))
                throw BadInputException.For(Path, $"has no token for '{BoundedFile.Quote(symbols[i], 40)}' (its byte-level vocabulary is incomplete)");
        }
        return ids;
    }

    /// <summary>
    /// GPT-2's pattern <c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c>,
    /// matched on Unicode scalar values (a UTF-16 regex would misclassify letters outside the BMP).
    /// </summary>
    public static IEnumerable<(int Start, int Length)> PreTokenize(string s)
    {
        var runes = new List<(Rune R, int At)>();
        for (int i = 0; i < s.Length;)
        {
            var r = Rune.GetRuneAt(s, i);
            runes.Add((r, i));
            i += r.Utf16SequenceLength;
        }
        int n = runes.Count;
        int Offset(int k) => k < n ? runes[k].At : s.Length;
        bool IsSpace(int k) => Rune.IsWhiteSpace(runes[k].R);
        bool IsLetter(int k) => Rune.IsLetter(runes[k].R);
        bool IsNumber(int k) => Rune.GetUnicodeCategory(runes[k].R) is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber;
        bool IsOther(int k) => !IsSpace(k) && !IsLetter(k) && !IsNumber(k);

        int pos = 0;
        while (pos < n)
        {
            int end = MatchAt(pos);
            yield return (Offset(pos), Offset(end) - Offset(pos));
            pos = end;
        }

        int MatchAt(int p)
        {
            // Contractions.
            if (runes[p].R.Value == '\'' && p + 1 < n)
            {
                int c1 = runes[p + 1].R.Value;
                if (c1 is 's' or 't' or 'm' or 'd') return p + 2;
                if (p + 2 < n)
                {
                    int c2 = runes[p + 2].R.Value;
                    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return p + 3;
                }
            }
            // ' ?' followed by a run of one class.
            int q = runes[p].R.Value == ' ' && p + 1 < n ? p + 1 : p;
            foreach (var cls in new Func<int, bool>[] { IsLetter, IsNumber, IsOther })
            {
                if (!cls(q)) continue;
                int e = q;
                while (e < n && cls(e)) e++;
                return e;
            }
            // Whitespace: \s+(?!\S) then \s+.
            int w = p;
            while (w < n && IsSpace(w)) w++;
            if (w == n || w - p == 1) return w;
            return w - 1;
        }
    }

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        var direct = new bool[256];
        for (int b = '!'; b <= '~'; b++) direct[b] = true;
        for (int b = 0xA1; b <= 0xAC; b++) direct[b] = true;
        for (int b = 0xAE; b <= 0xFF; b++) direct[b] = true;
        int next = 0;
        for (int b = 0; b < 256; b++) map[b] = direct[b] ? (char)b : (char)(256 + next++);
        return map;
    }
}
