using GeoShare.Planning;
using GeoShare.Sharing;

namespace GeoShare.Evaluation;

// The `--json` outputs of the commands that end in an evaluation (eval, compress, demo). Writer and readers (bench,
// tests) share these records; the property names are the JSON's field names (snake_case) and their order is the
// file's, so the committed bench cells read back into them. Fields of one task only (language model, image classifier
// or sentence encoder) are null for the others and left out of the file.

/// <summary>`geoshare eval --json`: perplexity of a language model on a text file, or accuracy of an image classifier.</summary>
public sealed record EvalOutput
{
    public string Command { get; init; } = "eval";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public string? Data { get; init; }
    public int? Window { get; init; }
    public int? Windows { get; init; }
    public long? PredictedTokens { get; init; }
    public string? FashionMnist { get; init; }
    public string? Split { get; init; }
    public int? Images { get; init; }
    public int? Correct { get; init; }
    public double? Accuracy { get; init; }
    public required double MeanNll { get; init; }
    public double? Perplexity { get; init; }
    public required long Parameters { get; init; }
    public required long ParameterBytes { get; init; }
    public required string Dtype { get; init; }
    public required double WallSeconds { get; init; }
    public double? TokensPerSecond { get; init; }
    public double? ImagesPerSecond { get; init; }
    public required int Threads { get; init; }
    /// <summary>Absent in cells written before the memory was measured.</summary>
    public EvalMemory? Memory { get; init; }
    /// <summary>"onnxruntime" for `eval --runtime onnx` (the model is then the ONNX file); absent for GeoShare's own.</summary>
    public string? Runtime { get; init; }
    /// <summary>True when the model was evaluated one layer at a time (--streaming); absent otherwise.</summary>
    public bool? Streaming { get; init; }
}

/// <summary>`geoshare eval --sentences FILE --against DIR --json`: a sentence encoder's embeddings against a reference encoder's.</summary>
public sealed record EmbeddingEvalOutput
{
    public string Command { get; init; } = "eval";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required string SentencesFile { get; init; }
    public required string Against { get; init; }
    public required int Sentences { get; init; }
    public required double MeanCosine { get; init; }
    public required double MinCosine { get; init; }
    /// <summary>Mean over sentences of |kNN₁₀ under the model ∩ kNN₁₀ under the reference| / 10 (cosine, the sentence itself left out).</summary>
    public required double Knn10Agreement { get; init; }
    public required long Parameters { get; init; }
    public required long ParameterBytes { get; init; }
    public required long ReferenceParameters { get; init; }
    public required string Dtype { get; init; }
    public required double WallSeconds { get; init; }
    public required double SentencesPerSecond { get; init; }
    public required int Threads { get; init; }
}

/// <summary>
/// Resident memory of an evaluation: what loading the model added, and the peak over the whole run. With
/// --memory-warmup the model was loaded and freed once before, and <see cref="FirstLoadResidentBytes"/> is what that
/// first load added (one-time code and pools included); otherwise null.
/// </summary>
public sealed record EvalMemory(long ResidentBytesBeforeLoad, long ResidentBytesAfterLoad, long ModelResidentBytes, long PeakResidentBytes, string Allocator,
    long? FirstLoadResidentBytes = null);

/// <summary>The `evaluation` part of `geoshare compress --json`: the compressed model on the test data.</summary>
public sealed record CompressedModelEvaluation
{
    public required string Data { get; init; }
    public double? Perplexity { get; init; }
    public double? Accuracy { get; init; }
    public int? Images { get; init; }
    /// <summary>Sentence encoders: cosine to the dense model's embeddings (mean, minimum) and 10-NN agreement over <see cref="Sentences"/>.</summary>
    public double? MeanCosine { get; init; }
    public double? MinCosine { get; init; }
    public double? Knn10Agreement { get; init; }
    public int? Sentences { get; init; }
    /// <summary>Mean NLL (language models, classifiers); for a sentence encoder the distillation loss mean ‖e − e_dense‖² = 2(1 − mean cosine).</summary>
    public required double MeanNll { get; init; }
    public long? PredictedTokens { get; init; }
    public double? TokensPerSecond { get; init; }
    public double? ImagesPerSecond { get; init; }
    public required double WallSeconds { get; init; }
}

/// <summary>`geoshare compress --json`: what was compressed how, the compressor's report, the evaluation and the plan.</summary>
public sealed record CompressOutput
{
    public string Command { get; init; } = "compress";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required string Method { get; init; }
    public double? Ratio { get; init; }
    public required string Calibration { get; init; }
    public required bool Refit { get; init; }
    public required CompressionReport Report { get; init; }
    public required double AchievedRatio { get; init; }
    public required long ParameterBytes { get; init; }
    /// <summary>Null without --eval.</summary>
    public CompressedModelEvaluation? Evaluation { get; init; }
    /// <summary>With --eval-ood: the same model on a second, out-of-domain text.</summary>
    public CompressedModelEvaluation? OodEvaluation { get; init; }
    public string? OutDir { get; init; }
    /// <summary>With --out: the dtype the checkpoint was written in (float16, bfloat16, float32) and its weights file's bytes.</summary>
    public string? SaveDtype { get; init; }
    public long? CheckpointBytes { get; init; }
    public required SharingPlan Plan { get; init; }
    /// <summary>The planner's summary (method geo only).</summary>
    public PlannerSummary? Planner { get; init; }
    public required int Threads { get; init; }
    public required string Allocator { get; init; }
    public required double WallSeconds { get; init; }
    /// <summary>True when the run held one layer at a time (--streaming); absent for the in-memory path.</summary>
    public bool? Streaming { get; init; }
    /// <summary>The process's peak resident set (VmHWM) at the end; written by the layer-wise path.</summary>
    public long? PeakResidentBytes { get; init; }
}

/// <summary>`geoshare demo --json`: dense, a heuristic and Geo-Sharing at one ratio.</summary>
public sealed record DemoOutput
{
    public string Command { get; init; } = "demo";
    public required string Model { get; init; }
    public required double Ratio { get; init; }
    public required string Baseline { get; init; }
    public required string Curvature { get; init; }
    public required IReadOnlyList<DemoModelResult> Results { get; init; }
    public required PlannerSummary Planner { get; init; }
    public required SharingPlan GeoPlan { get; init; }
    public required SharingPlan BaselinePlan { get; init; }
    public required IReadOnlyList<string> Pictures { get; init; }
    public required int Threads { get; init; }
    public required string Allocator { get; init; }
    public required double WallSeconds { get; init; }
}

/// <summary>One of the demo's models (dense, the heuristic, geo) on the test windows.</summary>
public sealed record DemoModelResult(string Model, long Parameters, long ParameterBytes, double Perplexity, double MeanNll, int Windows, double TokensPerSecond);

/// <summary>`geoshare verify --json`: a model's logits against a reference file's.</summary>
public sealed record VerifyOutput
{
    public string Command { get; init; } = "verify";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required bool Compressed { get; init; }
    public required string Reference { get; init; }
    /// <summary>input_ids or pixel_values.</summary>
    public required string Input { get; init; }
    public required long[] InputShape { get; init; }
    public required long[] LogitsShape { get; init; }
    public required double RelativeError { get; init; }
    public required double MaxAbsDifference { get; init; }
    public required double Tolerance { get; init; }
    public required bool Matches { get; init; }
    public required string Dtype { get; init; }
    public required double WallSeconds { get; init; }
}
