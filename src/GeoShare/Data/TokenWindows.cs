namespace GeoShare.Data;

/// <summary>
/// A text file encoded as one string and cut into non-overlapping windows of <see cref="WindowLength"/>
/// tokens from the start; the remainder is dropped (the evaluation protocol of the reference numbers).
/// </summary>
public sealed class TokenWindows
{
    public string Source { get; }
    public int WindowLength { get; }
    public int TotalTokens { get; }
    private readonly int[] _ids;

    /// <summary>The tokenizer.json that produced the ids (an id the model cannot take is its fault, not the text's).</summary>
    public string? Tokenizer { get; private set; }

    private TokenWindows WithTokenizer(string path)
    {
        Tokenizer = path;
        return this;
    }

    public int Count => _ids.Length / WindowLength;
    public long PredictedTokens => (long)Count * (WindowLength - 1);

    private TokenWindows(string source, int[] ids, int windowLength)
    {
        Source = source;
        TotalTokens = ids.Length;
        WindowLength = windowLength;
        _ids = ids.AsSpan(0, ids.Length / windowLength * windowLength).ToArray();
    }

    public static TokenWindows FromFile(string path, ByteLevelBpeTokenizer tokenizer, int windowLength)
    {
        if (Directory.Exists(path)) throw BadInputException.For(path, "is a folder, expected a text file");
        if (!File.Exists(path)) throw BadInputException.For(path, "data file not found");
        string text = BoundedFile.ReadAllText(path, BoundedFile.TextLimit, "data file");
        if (text.Length == 0) throw BadInputException.For(path, "data file is empty");
        return FromIds(path, tokenizer.Encode(text), windowLength).WithTokenizer(tokenizer.Path);
    }

    public static TokenWindows FromIds(string source, int[] ids, int windowLength)
    {
        if (windowLength < 2) throw new ArgumentOutOfRangeException(nameof(windowLength), "a window needs at least 2 tokens");
        if (ids.Length < windowLength)
            throw BadInputException.For(source, $"data has {ids.Length} tokens, shorter than one {windowLength}-token window");
        return new TokenWindows(source, ids, windowLength);
    }

    public ReadOnlySpan<int> Window(int index) => _ids.AsSpan(index * WindowLength, WindowLength);

    /// <summary>Windows first, first + stride, … (count of them): the calibration selection.</summary>
    public int[] Select(int count, int stride, int first = 0)
    {
        if (count <= 0) throw new UsageException($"the number of windows must be positive (got {count})");
        if (stride <= 0) throw new UsageException($"the window stride must be positive (got {stride})");
        long last = first + (long)(count - 1) * stride;
        if (last >= Count)
            throw new UsageException($"{count} windows with stride {stride} need {last + 1} windows, {Source} has {Count}");
        return Enumerable.Range(0, count).Select(i => first + i * stride).ToArray();
    }

    /// <summary>The ids of the given windows as a [windows, length] int64 tensor.</summary>
    public TorchSharp.torch.Tensor Batch(IReadOnlyList<int> windows)
    {
        var data = new long[windows.Count * WindowLength];
        for (int w = 0; w < windows.Count; w++)
        {
            var win = Window(windows[w]);
            for (int i = 0; i < WindowLength; i++) data[w * WindowLength + i] = win[i];
        }
        return TorchSharp.torch.tensor(data, [windows.Count, WindowLength]);
    }
}
