using System.Diagnostics;
using Google.OrTools.Sat;

namespace GeoShare.Planning;

/// <summary>The groups of one matrix type that a search may use.</summary>
public sealed record TypeSearch(string Type, int Layers, IReadOnlyList<GroupCandidate> Candidates);

public sealed record ChosenGroup(string Type, int[] Layers, RankOption Option);

/// <summary>A chosen coloring and ranks for every type: total predicted cost, stored parameters, and how it was found.</summary>
public sealed record SearchResult(IReadOnlyList<ChosenGroup> Groups, double Objective, long Parameters, string Method, string Status, double? Bound, double Seconds);

/// <summary>
/// Chooses, for every matrix type, a partition of its layers into groups and a rank per group, minimising the
/// summed predicted loss increase under one parameter budget for all types together:
///   minimise Σ_types Σ_groups cost(S, k_S)  subject to  Σ params(S, k_S) ≤ budget,
/// each layer of each type in exactly one group. A set partition is a choice of disjoint candidate groups, so the
/// relabelling symmetry of colorings never enters: every coloring is one set partition.
/// </summary>
public static class ColoringSearch
{
    /// <summary>
    /// Exact by CP-SAT: one Boolean per (candidate group, rank); exactly one chosen group covers each layer of each
    /// type; the budget is one linear constraint. Costs are scaled to integers (relative resolution 1e-9).
    /// </summary>
    public static SearchResult Exact(IReadOnlyList<TypeSearch> types, long budget, double timeLimitSeconds = 120, int workers = 2)
    {
        var sw = Stopwatch.StartNew();
        var model = new CpModel();
        var vars = new List<(ChosenGroup Choice, BoolVar Var)>();
        double maxAbs = types.SelectMany(t => t.Candidates).SelectMany(c => c.Options).Select(o => Math.Abs(o.Predicted)).DefaultIfEmpty(1).Max();
        double scale = 1e9 / Math.Max(maxAbs, 1e-300);
        foreach (var t in types)
        {
            var cover = Enumerable.Range(0, t.Layers).Select(_ => new List<BoolVar>()).ToArray();
            foreach (var c in t.Candidates)
                foreach (var o in c.Options)
                {
                    var v = model.NewBoolVar($"{t.Type}:{string.Join('.', c.Layers)}:{o.Rank}");
                    vars.Add((new ChosenGroup(t.Type, c.Layers, o), v));
                    foreach (int l in c.Layers) cover[l].Add(v);
                }
            for (int l = 0; l < t.Layers; l++)
            {
                if (cover[l].Count == 0) throw new InvalidOperationException($"layer {l} of {t.Type} is in no candidate group");
                model.AddExactlyOne(cover[l]);
            }
        }
        model.Add(LinearExpr.WeightedSum(vars.Select(v => v.Var), vars.Select(v => v.Choice.Option.Parameters)) <= budget);
        model.Minimize(LinearExpr.WeightedSum(vars.Select(v => v.Var), vars.Select(v => (long)Math.Round(v.Choice.Option.Predicted * scale))));
        var solver = new CpSolver { StringParameters = $"max_time_in_seconds:{timeLimitSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)} num_workers:{workers} random_seed:0" };
        var status = solver.Solve(model);
        if (status is not (CpSolverStatus.Optimal or CpSolverStatus.Feasible))
            throw new NumericalException($"the sharing search found no plan within the budget ({status})");
        var chosen = vars.Where(v => solver.BooleanValue(v.Var)).Select(v => v.Choice).ToList();
        return new SearchResult(chosen, chosen.Sum(c => c.Option.Predicted), chosen.Sum(c => c.Option.Parameters), "cp-sat",
            status == CpSolverStatus.Optimal ? "optimal" : "feasible", solver.BestObjectiveBound / scale, sw.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// Every canonical coloring of every type with every rank choice (tests and tiny problems only): the reference
    /// the exact search is checked against.
    /// </summary>
    public static SearchResult BruteForce(IReadOnlyList<TypeSearch> types, long budget)
    {
        var sw = Stopwatch.StartNew();
        // Per type: every (coloring, ranks) as a list of groups with its cost and parameters.
        var perType = types.Select(t =>
        {
            var byLayers = t.Candidates.ToDictionary(c => string.Join('.', c.Layers));
            var configurations = new List<(List<ChosenGroup> Groups, double Cost, long Params)>();
            foreach (var coloring in SetPartitions.Enumerate(t.Layers))
            {
                var groups = SetPartitions.Groups(coloring);
                if (!groups.All(g => byLayers.ContainsKey(string.Join('.', g)))) continue;
                var candidates = groups.Select(g => byLayers[string.Join('.', g)]).ToArray();
                foreach (var combo in Product(candidates.Select(c => c.Options).ToArray()))
                {
                    var chosen = candidates.Zip(combo, (c, o) => new ChosenGroup(t.Type, c.Layers, o)).ToList();
                    configurations.Add((chosen, combo.Sum(o => o.Predicted), combo.Sum(o => o.Parameters)));
                }
            }
            return configurations;
        }).ToList();
        (List<ChosenGroup>, double, long)? best = null;
        foreach (var combo in Product(perType.Select(p => (IReadOnlyList<(List<ChosenGroup>, double, long)>)p).ToArray()))
        {
            long p = combo.Sum(c => c.Item3);
            double cost = combo.Sum(c => c.Item2);
            if (p <= budget && (best is null || cost < best.Value.Item2))
                best = (combo.SelectMany(c => c.Item1).ToList(), cost, p);
        }
        if (best is null) throw new NumericalException("no plan within the budget");
        return new SearchResult(best.Value.Item1, best.Value.Item2, best.Value.Item3, "brute-force", "optimal", best.Value.Item2, sw.Elapsed.TotalSeconds);
    }

    private static IEnumerable<T[]> Product<T>(IReadOnlyList<T>[] lists)
    {
        var index = new int[lists.Length];
        if (lists.Any(l => l.Count == 0)) yield break;
        while (true)
        {
            yield return index.Select((i, j) => lists[j][i]).ToArray();
            int k = lists.Length - 1;
            while (k >= 0 && ++index[k] == lists[k].Count) { index[k] = 0; k--; }
            if (k < 0) yield break;
        }
    }

    /// <summary>
    /// Heuristic for many layers: Lagrangian relaxation of the budget (cost + λ·parameters), per type greedy merging
    /// of groups from singletons followed by single-layer moves, λ by bisection to meet the budget, then the
    /// leftover budget spent on the rank increases that buy the most predicted loss per parameter.
    /// </summary>
    public static SearchResult Greedy(IReadOnlyList<(string Type, int Layers)> types, Func<string, int[], GroupCandidate?> candidate, long budget,
        int maxIterations = 200)
    {
        var sw = Stopwatch.StartNew();
        List<ChosenGroup> SolveFor(double lambda)
        {
            var all = new List<ChosenGroup>();
            foreach (var (type, n) in types)
            {
                double Value(int[] layers) => candidate(type, layers) is { } c ? c.Options.Min(o => o.Predicted + lambda * o.Parameters) : double.PositiveInfinity;
                var groups = Enumerable.Range(0, n).Select(l => new[] { l }).ToList();
                bool improved = true;
                for (int it = 0; improved && it < maxIterations; it++)
                {
                    improved = false;
                    double bestGain = -1e-15;
                    (int A, int B) pick = (-1, -1);
                    for (int a = 0; a < groups.Count; a++)
                        for (int b = a + 1; b < groups.Count; b++)
                        {
                            var union = groups[a].Concat(groups[b]).Order().ToArray();
                            double gain = Value(union) - Value(groups[a]) - Value(groups[b]);
                            if (gain < bestGain) { bestGain = gain; pick = (a, b); }
                        }
                    if (pick.A >= 0)
                    {
                        groups[pick.A] = groups[pick.A].Concat(groups[pick.B]).Order().ToArray();
                        groups.RemoveAt(pick.B);
                        improved = true;
                    }
                }
                // Local search: move one layer to another group (or alone) while that lowers the value.
                for (int it = 0; it < maxIterations; it++)
                {
                    bool moved = false;
                    for (int g = 0; g < groups.Count && !moved; g++)
                        foreach (int l in groups[g])
                        {
                            var rest = groups[g].Where(x => x != l).ToArray();
                            double before = Value(groups[g]);
                            double restValue = rest.Length == 0 ? 0 : Value(rest);
                            for (int h = -1; h < groups.Count && !moved; h++)
                            {
                                if (h == g) continue;
                                var target = h < 0 ? new[] { l } : groups[h].Append(l).Order().ToArray();
                                double delta = restValue + Value(target) - before - (h < 0 ? 0 : Value(groups[h]));
                                if (delta < -1e-12 * Math.Max(1, Math.Abs(before)))
                                {
                                    if (h < 0) groups.Add(target); else groups[h] = target;
                                    if (rest.Length == 0) groups.RemoveAt(g); else groups[g] = rest;
                                    moved = true;
                                }
                            }
                            if (moved) break;
                        }
                    if (!moved) break;
                }
                foreach (var g in groups)
                {
                    var c = candidate(type, g)!;
                    all.Add(new ChosenGroup(type, g, c.Options.MinBy(o => o.Predicted + lambda * o.Parameters)!));
                }
            }
            return all;
        }
        long Params(List<ChosenGroup> s) => s.Sum(c => c.Option.Parameters);

        var solution = SolveFor(0);
        if (Params(solution) > budget)
        {
            double lo = 0, hi = 1e-12;
            while (Params(SolveFor(hi)) > budget)
            {
                hi *= 4;
                if (hi > 1e12) throw new NumericalException("no plan within the budget");
            }
            for (int it = 0; it < 40; it++)
            {
                double mid = 0.5 * (lo + hi);
                if (Params(SolveFor(mid)) > budget) lo = mid; else hi = mid;
            }
            solution = SolveFor(hi);
        }
        // Spend what is left of the budget: raise ranks where a parameter buys the most predicted loss.
        while (true)
        {
            long left = budget - Params(solution);
            var upgrades = solution.Select((c, i) => (i, c, next: candidate(c.Type, c.Layers)!.Options
                    .Where(o => o.Parameters > c.Option.Parameters && o.Parameters - c.Option.Parameters <= left && o.Predicted < c.Option.Predicted)
                    .Select(o => (o, rate: (c.Option.Predicted - o.Predicted) / (o.Parameters - c.Option.Parameters))).OrderByDescending(x => x.rate).FirstOrDefault()))
                .Where(u => u.next.o is not null).OrderByDescending(u => u.next.rate).ToList();
            if (upgrades.Count == 0) break;
            var best = upgrades[0];
            solution[best.i] = best.c with { Option = best.next.o };
        }
        return new SearchResult(solution, solution.Sum(c => c.Option.Predicted), Params(solution), "greedy", "heuristic", null, sw.Elapsed.TotalSeconds);
    }
}
