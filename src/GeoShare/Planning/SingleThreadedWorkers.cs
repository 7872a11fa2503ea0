using TorchSharp;

namespace GeoShare.Planning;

/// <summary>
/// Independent tensor jobs on every core, each worker single-threaded (the group-cost matrices are small: two
/// workers beat one worker with two threads, and four threads on two cores thrash). libtorch's thread count is
/// global to the process: it is 1 while the jobs run and restored after, so no other tensor work may run meanwhile.
/// </summary>
internal static class SingleThreadedWorkers
{
    /// <param name="wide">Jobs that must run alone (<see cref="WideJobs"/>): they run first, one at a time with every thread;
    /// the others then run on the single-threaded workers. Results are in the jobs' order either way.</param>
    /// <param name="size">An estimate of each job's work: the workers take the largest first, so that no worker is left alone
    /// with a large job at the end (longest-processing-time order).</param>
    public static T[] Map<TJob, T>(IReadOnlyList<TJob> jobs, Func<TJob, T> work, Func<TJob, bool>? wide, Func<TJob, double>? size = null)
    {
        if (wide is null) return Map(jobs, work, size);
        var results = new T[jobs.Count];
        var isWide = jobs.Select(wide).ToArray();   // decided once, before any job runs
        foreach (int i in Enumerable.Range(0, jobs.Count).Where(i => isWide[i])) results[i] = work(jobs[i]);
        var rest = Enumerable.Range(0, jobs.Count).Where(i => !isWide[i]).ToList();
        var done = Map(rest, i => work(jobs[i]), size is null ? null : i => size(jobs[i]));
        for (int k = 0; k < rest.Count; k++) results[rest[k]] = done[k];
        return results;
    }

    public static T[] Map<TJob, T>(IReadOnlyList<TJob> jobs, Func<TJob, T> work, Func<TJob, double>? size = null)
    {
        var results = new T[jobs.Count];
        int workers = Math.Max(1, torch.get_num_threads());
        if (workers == 1)
        {
            for (int i = 0; i < jobs.Count; i++) results[i] = work(jobs[i]);
            return results;
        }
        torch.set_num_threads(1);
        try
        {
            // One job at a time to whichever worker is free, the largest first where sizes are given (a stable order: ties
            // keep theirs): with jobs of very different sizes a late large one left the other worker idle.
            var order = Enumerable.Range(0, jobs.Count);
            if (size is not null) order = order.OrderByDescending(i => size(jobs[i]));
            Parallel.ForEach(System.Collections.Concurrent.Partitioner.Create(order.ToArray(), System.Collections.Concurrent.EnumerablePartitionerOptions.NoBuffering),
                new ParallelOptions { MaxDegreeOfParallelism = workers }, i => results[i] = work(jobs[i]));
        }
        catch (AggregateException e)
        {
            // The first worker's error as itself (a bad input names its file, not "one or more errors occurred").
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.Flatten().InnerExceptions[0]).Throw();
            throw;
        }
        finally
        {
            torch.set_num_threads(workers);
        }
        return results;
    }
}

/// <summary>
/// Which group jobs are too large to run two at once: a job's working set is estimated as three [in, in] float64 matrices
/// (grams, their sum, the whitening or its products) and three copies of the members' stacked [in, n·out] weights (the
/// weights, their products with the basis and the bound's [K, out] terms). Beyond <see cref="Bytes"/> (a 1B model's
/// q_proj pair: 0.3 GB, gate/up_proj single layer 0.5 GB and pair 0.9 GB, down_proj single layer 2 GB) the job runs alone with every thread
/// (<see cref="SingleThreadedWorkers.Map{TJob, T}(IReadOnlyList{TJob}, Func{TJob, T}, Func{TJob, bool}?)"/>): two at once
/// did not fit a 3 GB limit (bench/scale.md). The bundled models' groups are all narrower; the GPT-2 124M shape's mlp.c_proj and a 32 × d1024 LLaMA's down_proj run alone.
/// </summary>
internal static class WideJobs
{
    public const long Bytes = 256L << 20;

    public static bool IsWide(long inFeatures, long outFeatures, int layers) =>
        8.0 * (3.0 * inFeatures * inFeatures + 3.0 * layers * inFeatures * outFeatures) > Bytes;
}
