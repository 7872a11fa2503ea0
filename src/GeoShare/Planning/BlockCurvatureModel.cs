using GeoShare.Curvature;
using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>
/// The second-order model of the loss in one weight matrix W [in, out] (a block):
/// ΔL(δ) ≈ ⟨g, δ⟩ + ½ δᵀĤδ with
///   Ĥ = A ⊗ diag(γ) + Σᵢ cᵢ vᵢvᵢᵀ,  i.e.  δᵀĤδ = Σⱼ γⱼ δⱼᵀAδⱼ + Σᵢ cᵢ ⟨Vᵢ, δ⟩²  (δⱼ: column j).
/// A is the second moment of the block's inputs. The top-k eigenpairs (λᵢ, Vᵢ) of the block's curvature are
/// represented exactly: cᵢ = λᵢ − Vᵢᵀ(A ⊗ diag γ)Vᵢ ≥ 0 makes Ĥ agree with the curvature on them.
/// Exact curvature (Lanczos on Hessian-vector products, Hutchinson trace): γ = β·1, the bulk β(A ⊗ I) with β
/// fitted so that tr Ĥ equals the Hessian's trace. K-FAC: γ = diag(G) (K-FAC's output factor, its correlations
/// between output units dropped) and the top-k pairs are K-FAC's (products of A's and G's eigenpairs).
/// What the model ignores: curvature between blocks (δ of two layers interacting), the rest of the spectrum's
/// shape beyond the top-k, and the indefinite part of the Hessian beyond the top pairs.
/// </summary>
public sealed class BlockCurvatureModel : IDisposable
{
    public required string Site { get; init; }
    /// <summary>∂L/∂W on the curvature batch, [in, out], float64; null where the first-order term is not used (taken as zero).</summary>
    public Tensor? Gradient { get; init; }
    /// <summary>Top eigenvalues of the block's curvature, descending.</summary>
    public required double[] TopValues { get; init; }
    private readonly Tensor? _vectors;
    /// <summary>
    /// Their eigenvectors as [k, in, out], float64, orthonormal. Stored (exact curvature) or, for K-FAC, kept as factors
    /// (<see cref="TopFactors"/>) and multiplied out on each read: a new tensor the caller's scope owns.
    /// </summary>
    public Tensor TopVectors
    {
        get => _vectors ?? (TopFactors is var (a, g)
            ? torch.stack(Enumerable.Range(0, (int)a.shape[0]).Select(i => torch.outer(a[i], g[i])).ToArray())
            : throw new InvalidOperationException("no top vectors"));
        init => _vectors = value;
    }
    /// <summary>K-FAC: eigenvector i = outer(A[i], G[i]), A [k, in], G [k, out] (null: <see cref="TopVectors"/> is stored).</summary>
    public (Tensor A, Tensor G)? TopFactors { get; init; }
    private readonly Tensor? _a;
    private readonly (IGramSource Grams, string Site)? _moment;
    /// <summary>
    /// Input second moment E[xxᵀ], [in, in], float64: owned by the model, or made on each read from a borrowed calibration
    /// gram (XᵀX / rows, a new tensor the caller's scope owns) so that the planner holds the grams once (or not at all, where
    /// they are on disk), not twice.
    /// </summary>
    public Tensor A
    {
        get
        {
            if (_a is not null) return _a;
            using var gram = BorrowedGram();
            return gram.DivScalar(_moment!.Value.Grams.Rows);
        }
        init => _a = value;
    }

    /// <summary>
    /// A·y, [in, n]: with a borrowed gram (XᵀX·y) / rows, without making A (an [in, in] copy per call).
    /// <paramref name="gram"/>: this block's calibration gram where the caller has it already (a spilled gram is not read again).
    /// </summary>
    public Tensor TimesA(Tensor y, Tensor? gram = null)
    {
        if (_a is not null) return _a.matmul(y);
        if (_moment is null) throw new InvalidOperationException("no second moment");
        if (gram is not null) return gram.matmul(y).DivScalar(_moment.Value.Grams.Rows);
        using var own = BorrowedGram();
        return own.matmul(y).DivScalar(_moment.Value.Grams.Rows);
    }

    /// <summary>The rows A divides the calibration gram by, where A is read from it (A·y = XᵀX·y / rows); null where A is the model's own.</summary>
    public long? CalibrationRows => _a is null && _moment is { } m ? m.Grams.Rows : null;

    private Tensor BorrowedGram() => _moment is var (grams, site) ? grams.Gram(site) : throw new InvalidOperationException("no second moment");

    /// <summary>A read as <c>Gram / Rows</c> from a gram source the caller keeps alive for the model's lifetime (not disposed here).</summary>
    public (IGramSource Grams, string Site)? BorrowedMoment { get => _moment; init => _moment = value; }
    /// <summary>γ, the bulk's weight per output unit, [out], float64.</summary>
    public required Tensor OutputWeights { get; init; }
    /// <summary>cᵢ ≥ 0 for the top eigenvectors.</summary>
    public required double[] Corrections { get; set; }
    public required string Method { get; init; }
    /// <summary>The block's curvature trace (exact: Hutchinson estimate; K-FAC: tr A · tr G).</summary>
    public double Trace { get; init; }
    /// <summary>The trace estimate's standard error (exact curvature); null where the trace is exact (K-FAC).</summary>
    public double? TraceStandardError { get; init; }

    public int OutFeatures => (int)OutputWeights.shape[0];

    public double Linear(Tensor delta)
    {
        if (Gradient is null) return 0;
        using var scope = torch.NewDisposeScope();
        return Gradient.mul(delta).sum().item<double>();
    }

    public double Quadratic(Tensor delta)
    {
        using var scope = torch.NewDisposeScope();
        double bulk = TimesA(delta).mul(delta).mul(OutputWeights).sum().item<double>();
        if (Corrections.Length == 0) return bulk;
        var proj = TopVectors.mul(delta.unsqueeze(0)).sum([1L, 2L]);
        return bulk + proj.PowScalar(2).mul(torch.tensor(Corrections)).sum().item<double>();
    }

    /// <summary>Σᵢ λᵢ ⟨Vᵢ, δ⟩²: the perturbation's energy in the high-curvature directions.</summary>
    public double HighCurvatureEnergy(Tensor delta)
    {
        using var scope = torch.NewDisposeScope();
        var proj = TopVectors.mul(delta.unsqueeze(0)).sum([1L, 2L]);
        return proj.PowScalar(2).mul(torch.tensor(TopValues)).sum().item<double>();
    }

    /// <summary>Predicted loss change ⟨g, δ⟩ + ½ δᵀĤδ.</summary>
    public double Predict(Tensor delta) => Linear(delta) + 0.5 * Quadratic(delta);

    /// <summary>A model from top eigenpairs and a bulk A ⊗ diag(γ); takes ownership of the tensors.</summary>
    public static BlockCurvatureModel Create(string site, string method, Tensor? gradient, double[] values, Tensor vectors, Tensor a, Tensor gamma, double trace,
        double? traceStandardError = null) => Create(site, method, gradient, values, vectors, null, a, gamma, trace, traceStandardError);

    /// <summary>
    /// A K-FAC model whose top eigenvectors are kept as factors (outer(fa[i], fg[i])) and whose A is read from a borrowed
    /// calibration gram; takes ownership of the other tensors.
    /// </summary>
    public static BlockCurvatureModel CreateFactored(string site, Tensor? gradient, double[] values, Tensor fa, Tensor fg, (IGramSource Grams, string Site) moment,
        Tensor gamma, double trace) =>
        Create(site, "kfac", gradient, values, null, (fa, fg), null, moment, gamma, trace, null);

    private static BlockCurvatureModel Create(string site, string method, Tensor? gradient, double[] values, Tensor? vectors, (Tensor, Tensor)? factors,
        Tensor a, Tensor gamma, double trace, double? traceStandardError) =>
        Create(site, method, gradient, values, vectors, factors, a, null, gamma, trace, traceStandardError);

    private static BlockCurvatureModel Create(string site, string method, Tensor? gradient, double[] values, Tensor? vectors, (Tensor, Tensor)? factors,
        Tensor? a, (IGramSource, string)? moment, Tensor gamma, double trace, double? traceStandardError)
    {
        var model = new BlockCurvatureModel
        {
            Site = site, Method = method, Gradient = gradient, TopValues = values, TopVectors = vectors!, TopFactors = factors, A = a!, BorrowedMoment = moment,
            OutputWeights = gamma, Corrections = [], Trace = trace, TraceStandardError = traceStandardError,
        };
        using (var scope = torch.NewDisposeScope())
        {
            // ⟨Vᵢ, (A ⊗ γ)Vᵢ⟩: for K-FAC's Vᵢ = aᵢgᵢᵀ it is (aᵢᵀAaᵢ)(Σⱼ γⱼgᵢⱼ²), without the [k, in, out] vectors or A itself.
            var along = model.TopFactors is var (fa, fg)
                ? model.TimesA(fa.t()).mul(fa.t()).sum([0L]).mul(fg.PowScalar(2).mul(gamma.unsqueeze(0)).sum(1)).data<double>().ToArray()
                : model.A.unsqueeze(0).matmul(model.TopVectors).mul(model.TopVectors).mul(gamma).sum([1L, 2L]).data<double>().ToArray();
            model.Corrections = values.Select((x, i) => Math.Max(0, x - along[i])).ToArray();
        }
        return model;
    }

    /// <summary>
    /// The exact-curvature model: bulk β(A ⊗ I) with tr = trace − Σλᵢ spread like the inputs' second moment.
    /// β is kept positive (an indefinite remainder is not modelled).
    /// </summary>
    public static BlockCurvatureModel FromEigenpairs(string site, Tensor? gradient, double[] values, Tensor vectors, double trace, Tensor a,
        double? traceStandardError = null)
    {
        int dout = (int)vectors.shape[2];
        double beta;
        using (var scope = torch.NewDisposeScope())
        {
            var ai = a.unsqueeze(0).matmul(vectors).mul(vectors).sum([1L, 2L]).data<double>().ToArray();
            double trA = a.trace().item<double>();
            beta = (trace - values.Sum()) / Math.Max(trA * dout - ai.Sum(), 1e-300);
            double floor = 1e-3 * Math.Max(values.Where(v => v > 0).DefaultIfEmpty(0).Average(), 1e-12) / Math.Max(trA / a.shape[0], 1e-300);
            beta = Math.Max(beta, floor);
        }
        return Create(site, "exact", gradient, values, vectors, a, Scalars.Full(dout, beta, ScalarType.Float64), trace, traceStandardError);
    }

    /// <summary>The curvature engine's options for the planner's blocks: top pairs, gradients, and a trace for the bulk.</summary>
    public static CurvatureOptions EngineOptions(PlannerOptions o) => new()
    {
        Method = o.Curvature, Top = o.TopK, Tolerance = o.Tolerance, KfacSamples = o.KfacSamples, Seed = o.Seed,
        // Exact: one joint probe set for all blocks' traces; every block by Lanczos (no dense small blocks).
        Trace = o.Curvature == CurvatureMethod.Exact ? TraceEstimator.BlockHutchinson : TraceEstimator.None, TraceProducts = o.TraceProducts,
        DenseBelow = 0, KeepVectors = true, KeepGradient = o.UseGradient, FactoredVectors = true,
    };

    /// <summary>
    /// The second-order model of every site of the model from the curvature engine (<see cref="CurvatureEngine"/>):
    /// exact (Lanczos + joint Hutchinson traces on one gradient graph) or K-FAC; A from the calibration second moments
    /// (K-FAC's models borrow <paramref name="grams"/>: keep them alive while the models are used).
    /// </summary>
    public static Dictionary<string, BlockCurvatureModel> Collect(PretrainedModel model, LossBatch batch, ActivationGrams grams,
        PlannerOptions o, IProgress<ProgressTick>? progress) => Collect(PlanningInputs.Resident(model, grams), batch, o, progress);

    /// <summary>
    /// <see cref="Collect(PretrainedModel, LossBatch, ActivationGrams, PlannerOptions, IProgress{ProgressTick}?)"/> on the
    /// planner's inputs: a layer-wise run's K-FAC sweeps its stream (one layer resident); exact curvature needs the whole model.
    /// </summary>
    public static Dictionary<string, BlockCurvatureModel> Collect(PlanningInputs inputs, LossBatch batch, PlannerOptions o, IProgress<ProgressTick>? progress)
    {
        var (model, grams) = (inputs.Model, inputs.Grams);
        var sites = model.Sites.ToList();
        if (sites.Any(s => model.GetProjection(s) is not DenseLinear)) throw new UsageException("curvature needs the dense model");
        if (inputs.Stream is not null && o.Curvature != CurvatureMethod.Kfac)
            throw new UsageException("curvature", "exact (Hessian-vector product) curvature needs the whole model in memory; the layer-wise path has K-FAC");
        var blocks = CurvatureEngine.Collect(model, batch, sites.Select(s => new[] { s.WeightName }).ToList(), EngineOptions(o), progress, inputs.Stream);
        Tensor A(ProjectionSite s)
        {
            using var g = grams.Gram(s.Name);
            return g.DivScalar(grams.Rows);
        }
        (IGramSource, string) Moment(ProjectionSite s) => (grams, s.Name);
        var result = new Dictionary<string, BlockCurvatureModel>();
        for (int i = 0; i < sites.Count; i++)
        {
            var b = blocks[i];
            var gradient = b.Gradient is null ? null : ToInOut(model, sites[i], b.Gradient.unsqueeze(0))[0];
            // The model takes over diag G (and K-FAC's vector factors); the flat gradient and vectors were copied (or viewed) into [in, out].
            if (b.TopInputFactors is { } fa)
                result[sites[i].Name] = CreateFactored(sites[i].Name, gradient, b.TopEigenvalues, fa, b.TopOutputFactors!, Moment(sites[i]), b.OutputFactorDiagonal!, b.Trace!.Value);
            else
            {
                var vectors = ToInOut(model, sites[i], b.TopVectors!);
                result[sites[i].Name] = o.Curvature == CurvatureMethod.Kfac
                    ? Create(sites[i].Name, "kfac", gradient, b.TopEigenvalues, vectors, A(sites[i]), b.OutputFactorDiagonal!, b.Trace!.Value)
                    : FromEigenpairs(sites[i].Name, gradient, b.TopEigenvalues, vectors, b.Trace!.Value, A(sites[i]), b.TraceStandardError);
                b.TopVectors!.Dispose();
            }
            b.Gradient?.Dispose();
        }
        return result;
    }

    /// <summary>Flat vectors (or weight-shaped ones) in a site's storage layout → [k, in, out] float64.</summary>
    private static Tensor ToInOut(PretrainedModel model, ProjectionSite site, Tensor vectors)
    {
        var layout = model.GetProjection(site) is DenseLinear d ? d.Layout : WeightLayout.InOut;
        long k = vectors.shape[0];
        var v = vectors.to_type(ScalarType.Float64);
        return layout == WeightLayout.InOut
            ? v.reshape(k, site.InFeatures, site.OutFeatures).contiguous()
            : v.reshape(k, site.OutFeatures, site.InFeatures).transpose(1, 2).contiguous();
    }

    public void Dispose()
    {
        Gradient?.Dispose();
        _vectors?.Dispose();
        if (TopFactors is var (fa, fg)) { fa.Dispose(); fg.Dispose(); }
        _a?.Dispose();
        OutputWeights.Dispose();
    }
}
