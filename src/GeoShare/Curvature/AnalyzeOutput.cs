namespace GeoShare.Curvature;

/// <summary>
/// `geoshare analyze --json`: the options, the batch, timings and every block's curvature. Shared by the writer and
/// its readers; property names are the JSON's field names (snake_case), in the file's order.
/// </summary>
public sealed record AnalyzeOutput
{
    public string Command { get; init; } = "analyze";
    public required string Model { get; init; }
    public required string ModelType { get; init; }
    public required string Dtype { get; init; }
    public required string Batch { get; init; }
    public required long Predictions { get; init; }
    public required string Method { get; init; }
    public required AnalyzeOptions Options { get; init; }
    public required int Threads { get; init; }
    public required string Allocator { get; init; }
    public required AnalyzeTiming Timing { get; init; }
    public required IReadOnlyList<string> Pictures { get; init; }
    public required IReadOnlyList<BlockCurvature> Blocks { get; init; }
}

/// <summary>Where analyze's time went: gradient graphs, Hessian-vector products with the eigensolver, loading.</summary>
public sealed record AnalyzeTiming(double TotalSeconds, double BlocksSeconds, double GradientGraphSeconds, int HessianVectorProducts,
    double ProductsAndEigensolverSeconds, double LoadingAndSetupSeconds);

/// <summary>
/// analyze's options as its JSON has always written them (the committed cells read back): the engine's
/// <see cref="CurvatureOptions"/> with the trace estimator as the two flags of the command line.
/// </summary>
public sealed record AnalyzeOptions(int Top, int Bottom, bool Trace, int TraceProducts, bool HutchPlusPlus, bool Density, int DensityRuns,
    int DensitySteps, CurvatureMethod Method, double? Tolerance, int DenseBelow, int KfacSamples, long Seed, bool KeepVectors,
    KfacSweep KfacSweep = KfacSweep.Auto)
{
    public static AnalyzeOptions From(CurvatureOptions o) => new(o.Top, o.Bottom, o.Trace != TraceEstimator.None, o.TraceProducts,
        o.Trace == TraceEstimator.HutchPlusPlus, o.Density, o.DensityRuns, o.DensitySteps, o.Method, o.Tolerance, o.DenseBelow, o.KfacSamples,
        o.Seed, o.KeepVectors, o.KfacSweep);
}
