using System.Reflection;
using Xunit.Sdk;

// With GEOSHARE_STRESS_ALLOC=1, a thread allocates without pause beside every test (README: the stress run).
[assembly: GeoShare.Tests.AllocationStress]

namespace GeoShare.Tests;

/// <summary>
/// The stress run: a background thread that allocates managed garbage without pause, so that collections (and the
/// finalizer thread) run at any moment during the tensor tests. A TorchSharp object that native code still reads
/// but nothing references (an implicit Scalar, a temporary tensor outside a dispose scope) is then finalized
/// mid-call and the test fails or crashes, instead of once in a long while on CI.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class AllocationStressAttribute : BeforeAfterTestAttribute
{
    public const string Variable = "GEOSHARE_STRESS_ALLOC";
    private static Thread? _thread;
    public static long Collections => GC.CollectionCount(0);

    public override void Before(MethodInfo methodUnderTest)
    {
        if (Environment.GetEnvironmentVariable(Variable) != "1" || _thread is not null) return;
        _thread = new Thread(() =>
        {
            var keep = new object[64];
            for (long i = 0; ; i++)
            {
                keep[i % keep.Length] = new byte[(int)(i % 4096) + 16]; // short-lived garbage: a gen-0 collection every few ms
                if (i % 200_000 == 0) GC.Collect(1, GCCollectionMode.Forced, blocking: false);
            }
        }) { IsBackground = true, Name = "allocation stress" };
        _thread.Start();
    }
}
