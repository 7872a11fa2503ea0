using GeoShare.Models;
using GeoShare.Sharing;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Planning;

/// <summary>One rank a group may take: its stored parameters and the predicted loss increase of its members.</summary>
public sealed record RankOption(int Rank, long Parameters, double Predicted, double Linear, double Quadratic, double HighCurvatureEnergy);

/// <summary>A candidate group (layers of one matrix type that would share a basis) with its rank options.</summary>
public sealed record GroupCandidate(string Type, int[] Layers, IReadOnlyList<RankOption> Options);

/// <summary>
/// Predicted cost of sharing: for a group of layers and a rank, the shared basis is Basis Sharing's whitened
/// SVD of the group, each member's coefficients are curvature-aligned (<see cref="AlignedCoefficients"/>), and the
/// cost is Σ over members of ⟨g, δ⟩ + ½ δᵀĤδ. Group costs are cached by (type, layers); the ranks of one group
/// share one SVD (a smaller rank is a prefix of the basis).
/// </summary>
public sealed class GroupCostEvaluator : IDisposable
{
    private readonly PretrainedModel _model;
    private readonly ProjectionWeights _weights;
    private readonly IGramSource _grams;
    private readonly IReadOnlyDictionary<string, BlockCurvatureModel> _curvature;
    private readonly Dictionary<(string, long), GroupCandidate> _cache = new();
    public double Trust { get; }
    public bool UseGradient { get; }
    public int Evaluated { get { lock (_cache) return _cache.Count; } }
    /// <summary>Costed groups are read from here when present and written here when computed; null: in memory only.</summary>
    public GroupCostCells? Cells { get; init; }

    /// <summary>Whether the group was costed already (in this run or read from the cells).</summary>
    public bool IsCached(string type, int[] layers)
    {
        lock (_cache) return _cache.ContainsKey((type, Mask(layers)));
    }

    public GroupCostEvaluator(PretrainedModel model, ActivationGrams grams, IReadOnlyDictionary<string, BlockCurvatureModel> curvature, double trust, bool useGradient)
        : this(PlanningInputs.Resident(model, grams), curvature, trust, useGradient)
    {
    }

    /// <summary>Costs read each member's weight and gram from <paramref name="inputs"/> (the resident model, or the checkpoint and spilled grams).</summary>
    public GroupCostEvaluator(PlanningInputs inputs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature, double trust, bool useGradient)
    {
        _model = inputs.Model;
        _weights = inputs.Weights;
        _grams = inputs.Grams;
        _curvature = curvature;
        Trust = trust;
        UseGradient = useGradient;
    }

    public BlockCurvatureModel Curvature(string site) => _curvature[site];

    /// <summary>Whether costing this group must run alone (<see cref="WideJobs"/>).</summary>
    public bool IsWide(string type, int[] layers)
    {
        var site = _model.Site(type, layers[0]);
        return WideJobs.IsWide(site.InFeatures, site.OutFeatures, layers.Length);
    }

    /// <summary>A relative estimate of what costing a group still takes, for scheduling: 0 where it is cached, else
    /// n·in·out·min(in, n·out) (the basis's span and a rank's [r, r]·[r, out] products grow so).</summary>
    public double Work(string type, int[] layers)
    {
        if (IsCached(type, layers)) return 0;
        var site = _model.Site(type, layers[0]);
        double n = layers.Length, i = site.InFeatures, o = site.OutFeatures;
        return n * i * o * Math.Min(i, n * o);
    }

    private static long Mask(int[] layers) => layers.Aggregate(0L, (m, l) => m | (1L << l));

    public GroupCandidate Evaluate(string type, int[] layers, IReadOnlyList<int> ranks)
    {
        var key = (type, Mask(layers));
        lock (_cache)
            if (_cache.TryGetValue(key, out var cached)) return cached;
        if (Cells?.TryRead(type, layers, ranks) is { } stored)
        {
            lock (_cache) _cache[key] = stored;
            return stored;
        }
        var computed = Compute(type, layers, ranks);
        Cells?.Write(computed);
        lock (_cache) _cache[key] = computed;
        return computed;
    }

    private GroupCandidate Compute(string type, int[] layers, IReadOnlyList<int> ranks)
    {
        using var scope = torch.NewDisposeScope();
        var sites = layers.Select(l => _model.Site(type, l)).ToArray();
        // Each member's matrix [in, out] and gram, made (or read) for the group: float64 copies of every weight kept for the
        // whole plan cost twice the float32 model, and the grams may be on disk.
        var weights = sites.Select(_weights.Read).ToArray();
        var grams = sites.Select(s => _grams.Gram(s.Name)).ToArray();
        int maxRank = ranks.Max();
        // Only the basis's nested spans matter here (the coefficients are solved below): LeadingSpan, not Compute's SVD.
        var span = SharedBasis.LeadingSpan(weights, grams, maxRank);
        // Orthonormal columns with the same nested spans (Householder QR: the first r columns of Q span the first r of the
        // basis), so that each rank's solve needs no Cholesky of BᵀB and no change of coordinates (AlignedCoefficients).
        // A narrow group's XᵀX·B becomes XᵀX·Q = XᵀX·B·R⁻¹ where R is safely invertible; otherwise (a basis of dependent
        // columns) A·Q is made from the gram again.
        var (basis, triangle) = torch.linalg.qr(span.Basis);
        if (span.GramTimesBasis is { } gb)
        {
            using var diagonal = triangle.diagonal().abs();
            using var least = diagonal.min();
            using var most = diagonal.max();
            bool invertible = least.item<double>() > 1e-10 * most.item<double>();
            span = span with { GramTimesBasis = invertible ? gb.Select(x => torch.linalg.solve_triangular(triangle, x, upper: true, left: false)).ToArray() : null };
        }
        var totals = ranks.Select(_ => new double[4]).ToArray();
        for (int i = 0; i < sites.Length; i++)
        {
            using var aligned = new AlignedCoefficients(basis, weights[i], _curvature[sites[i].Name], calibrationGram: grams[i], span: span, member: i,
                orthonormal: true);
            for (int r = 0; r < ranks.Count; r++)
            {
                var s = aligned.Solve(ranks[r], Trust, UseGradient);
                totals[r][0] += s.Predicted;
                totals[r][1] += s.Linear;
                totals[r][2] += s.Quadratic;
                totals[r][3] += s.HighCurvatureEnergy;
            }
        }
        var options = ranks.Select((k, r) => new RankOption(k, SharedBasis.BasisParameters(sites[0].InFeatures, sites[0].OutFeatures, layers.Length, k),
            totals[r][0], totals[r][1], totals[r][2], totals[r][3])).ToList();
        return new GroupCandidate(type, layers, options);
    }

    /// <summary>Rank options of a group: the given kept fractions of its parameters, as distinct ranks.</summary>
    public IReadOnlyList<int> Ranks(string type, int groupSize, IReadOnlyList<double> keptFractions)
    {
        var site = _model.Site(type, 0);
        return keptFractions.Select(x => SharedBasis.RankForKeptFraction(site.InFeatures, site.OutFeatures, groupSize, x)).Distinct().Order().ToList();
    }

    public void Dispose()
    {
    }
}

/// <summary>Geo-Sharing's coefficients: curvature-aligned within the trust region (see <see cref="AlignedCoefficients"/>).</summary>
public sealed class CurvatureAlignedSolver(GroupCostEvaluator costs) : ICoefficientSolver
{
    public Tensor Solve(ProjectionSite site, Tensor basis, Tensor weight, Tensor gram, long rows)
    {
        // A = gram / rows applied as products, never copied (a 1B down_proj's gram is 537 MB).
        using var aligned = new AlignedCoefficients(basis, weight, costs.Curvature(site.Name), gram, aDivisor: rows);
        return aligned.Coefficients((int)basis.shape[1], costs.Trust, costs.UseGradient);
    }
}

/// <summary>
/// Curvature-aligned coefficients with their own block curvature models (collected again for a saved plan by
/// <see cref="GeoPlanner.AlignedCoefficients"/>); disposing it frees them.
/// </summary>
public sealed class AlignedCoefficientSolver : ICoefficientSolver, IDisposable
{
    private readonly GroupCostEvaluator _costs;
    private readonly IReadOnlyDictionary<string, BlockCurvatureModel> _curvature;
    private readonly CurvatureAlignedSolver _solver;

    public AlignedCoefficientSolver(GroupCostEvaluator costs, IReadOnlyDictionary<string, BlockCurvatureModel> curvature)
    {
        _costs = costs;
        _curvature = curvature;
        _solver = new CurvatureAlignedSolver(costs);
    }

    public Tensor Solve(ProjectionSite site, Tensor basis, Tensor weight, Tensor gram, long rows) => _solver.Solve(site, basis, weight, gram, rows);

    public void Dispose()
    {
        _costs.Dispose();
        foreach (var c in _curvature.Values) c.Dispose();
    }
}
