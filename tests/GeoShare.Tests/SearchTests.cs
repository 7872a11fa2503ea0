using GeoShare.Planning;
using GeoShare.Sharing;

namespace GeoShare.Tests;

/// <summary>The greedy search where the exact one is not run by default (more than 12 layers), on synthetic costs.</summary>
public class SearchTests
{
    private const int In = 32, Out = 32;
    private static readonly double[] KeptFractions = [0.3, 0.45, 0.6, 0.75];

    /// <summary>
    /// A sharing problem with known structure: layer l has a sensitivity e_l and a position p_l (random, so the best
    /// partners are not neighbours); a group's predicted cost at rank k is Σ e_l · exp(−k/6) · (1 + 3·spread of p).
    /// </summary>
    private sealed class Problem
    {
        public required int Layers { get; init; }
        public required int MaxGroup { get; init; }
        public required bool Contiguous { get; init; }
        public required HashSet<int> Private { get; init; }
        public required Dictionary<string, (double[] E, double[] P)> Types { get; init; }

        public bool Allowed(int[] g) =>
            g.Length == 1 || (g.Length <= MaxGroup && !g.Any(Private.Contains) && (!Contiguous || g[^1] - g[0] == g.Length - 1));

        public GroupCandidate Candidate(string type, int[] g)
        {
            var (e, p) = Types[type];
            double spread = g.Max(l => p[l]) - g.Min(l => p[l]);
            var options = KeptFractions.Select(f => SharedBasis.RankForKeptFraction(In, Out, g.Length, f)).Distinct().Select(k =>
            {
                double cost = g.Sum(l => e[l]) * Math.Exp(-k / 6.0) * (1 + 3 * spread);
                return new RankOption(k, SharedBasis.BasisParameters(In, Out, g.Length, k), cost, 0, cost, 0);
            }).ToList();
            return new GroupCandidate(type, g, options);
        }

        public long Dense => Types.Count * (long)Layers * In * Out;
    }

    private static Problem Make(int layers, int maxGroup, bool contiguous, int[] privateLayers, int seed)
    {
        var rng = new Random(seed);
        return new Problem
        {
            Layers = layers, MaxGroup = maxGroup, Contiguous = contiguous, Private = privateLayers.ToHashSet(),
            Types = new[] { "q", "fc" }.ToDictionary(t => t, _ =>
                (Enumerable.Range(0, layers).Select(_ => 0.5 + 1.5 * rng.NextDouble()).ToArray(), Enumerable.Range(0, layers).Select(_ => rng.NextDouble()).ToArray())),
        };
    }

    /// <summary>The largest relative gap of greedy over the optimum accepted here (measured on these cases: 0.00% to 3.1%).</summary>
    private const double StatedGap = 0.05;

    [Theory]
    [InlineData(13, 2, false, new int[0], 1)]
    [InlineData(14, 3, false, new int[0], 2)]
    [InlineData(15, 2, true, new int[0], 3)]
    [InlineData(16, 2, false, new[] { 0, 15 }, 4)]
    [InlineData(16, 3, true, new[] { 0, 7 }, 5)]
    public void GreedyBeyondTwelveLayersKeepsBudgetAndConstraintsAndComesWithinTheStatedGapOfTheOptimum(
        int layers, int maxGroup, bool contiguous, int[] privateLayers, int seed)
    {
        var problem = Make(layers, maxGroup, contiguous, privateLayers, seed);
        long budget = (long)(0.55 * problem.Dense);
        var searches = problem.Types.Keys.Select(t => new TypeSearch(t, layers,
            SetPartitions.Candidates(layers, maxGroup, contiguous, problem.Private).Select(g => problem.Candidate(t, g)).ToList())).ToList();
        Assert.All(searches, s => Assert.All(s.Candidates, c => Assert.True(problem.Allowed(c.Layers)))); // the exact search sees only allowed groups
        var exact = ColoringSearch.Exact(searches, budget);
        Assert.Equal("optimal", exact.Status);

        int calls = 0, refused = 0;
        var greedy = ColoringSearch.Greedy(problem.Types.Keys.Select(t => (t, layers)).ToList(), (t, g) =>
        {
            calls++;
            if (problem.Allowed(g)) return problem.Candidate(t, g);
            refused++;
            return null;
        }, budget);

        Assert.True(greedy.Parameters <= budget, $"{greedy.Parameters} parameters over the budget {budget}");
        Assert.Equal(greedy.Groups.Sum(g => g.Option.Parameters), greedy.Parameters);
        Assert.Equal(greedy.Groups.Sum(g => g.Option.Predicted), greedy.Objective, 1e-12);
        foreach (var type in problem.Types.Keys)
        {
            var groups = greedy.Groups.Where(g => g.Type == type).ToList();
            Assert.Equal(Enumerable.Range(0, layers), groups.SelectMany(g => g.Layers).Order()); // every layer in exactly one group
            foreach (var g in groups)
            {
                Assert.True(problem.Allowed(g.Layers), $"{type}: group {string.Join("+", g.Layers)} breaks the constraints");
                Assert.Contains(g.Option, problem.Candidate(type, g.Layers).Options);
            }
        }
        Assert.Contains(greedy.Groups, g => g.Layers.Length > 1); // it shares: the case is not trivial
        Assert.True(refused > 0, "no group was refused: the constraints never came up");
        Assert.True(calls > 0);

        double gap = (greedy.Objective - exact.Objective) / exact.Objective;
        Assert.True(gap >= -1e-9, $"greedy {greedy.Objective:G10} below the optimum {exact.Objective:G10}");
        Assert.True(gap <= StatedGap, $"greedy {greedy.Objective:G6} is {100 * gap:F2}% above the optimum {exact.Objective:G6}");
    }
}
