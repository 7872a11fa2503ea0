namespace GeoShare.Reporting;

// The bench's JSON: what `geoshare bench --json` writes, and results.json (one row per cell). Shared by the writer
// and its readers; property names are the JSON's field names (snake_case), in the file's order.

/// <summary>`geoshare bench --json`: how many cells the report covers and where it was written.</summary>
public sealed record BenchOutput
{
    public string Command { get; init; } = "bench";
    public required int Cells { get; init; }
    public required int Missing { get; init; }
    public required string Report { get; init; }
    public required string Results { get; init; }
    public required IReadOnlyList<string> Pictures { get; init; }
    public required double WallSeconds { get; init; }
}

/// <summary>results.json of the bench report: every cell's row and the pictures (relative to the report's folder).</summary>
public sealed record BenchResults(IReadOnlyList<BenchCellResult> Cells, IReadOnlyList<string> Pictures);

/// <summary>
/// One cell of the sweep: a model, a method and a ratio (none for the dense model). Metric: test perplexity
/// (language models), accuracy (the ViT) or mean cosine with the dense model's embeddings (sentence encoders, which also
/// give <paramref name="Knn10Agreement"/>); throughput: tokens, images or sentences per second. Language models also
/// give the perplexity of the same model on the out-of-domain text (null while that cell has not run).
/// </summary>
public sealed record BenchCellResult(string Model, string Method, double? Ratio, double Metric, double MeanNll, long Parameters, long ParameterBytes,
    double Throughput, double? AchievedRatio, double Seconds, double? Knn10Agreement = null, double? OutOfDomainPerplexity = null);
