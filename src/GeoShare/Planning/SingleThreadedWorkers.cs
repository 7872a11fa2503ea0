using TorchSharp;

namespace GeoShare.Planning;

/// <summary>
/// Independent tensor jobs on every core, each worker single-threaded (the group-cost matrices are small: two
/// workers beat one worker with two threads, and four threads on two cores thrash). libtorch's thread count is
/// global to the process: it is 1 while the jobs run and restored after, so no other tensor work may run meanwhile.
/// </summary>
internal static class SingleThreadedWorkers
{
    public static T[] Map<TJob, T>(IReadOnlyList<TJob> jobs, Func<TJob, T> work)
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
            Parallel.For(0, jobs.Count, new ParallelOptions { MaxDegreeOfParallelism = workers }, i => results[i] = work(jobs[i]));
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
