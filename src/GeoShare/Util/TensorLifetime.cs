using TorchSharp;

namespace GeoShare;

/// <summary>
/// Why GeoShare's tensor code runs inside dispose scopes. TorchSharp passes a tensor's raw native handle to libtorch
/// and does not keep the managed tensor alive for the length of the call. A temporary (in <c>a.sub(b).norm()</c>, the
/// difference) is unreachable as soon as its handle is loaded, so a garbage collection started by another thread can
/// finalize it and free memory that libtorch is still reading: a segfault in libtorch_cpu.so that no catch can stop
/// (seen in the test host, loading GPT-2 while the test platform's threads allocated). A
/// <see cref="torch.NewDisposeScope"/> references every tensor made inside it until it ends, which closes the race.
/// So the CLI's commands and each test run in one outer scope, and library code that may run without one names its
/// temporaries with <c>using</c> where it matters (checkpoint loading).
/// Not covered: the <see cref="Scalar"/> that TorchSharp 0.107 makes for a number argument (<c>t.mul(0.5)</c>) is
/// in no scope and has the same race, and so has the alpha = 1 that its one-argument add passes. Its window is the
/// start of one call: a test run with a second thread allocating without pause hit it ("Unknown scalar type"), and on
/// 2026-12-07 an ablation bench (RmsNorm's add of eps: "toFloat: Expected false to be true"). The library, the CLI,
/// the bench and the tests pass numbers through <see cref="Scalars"/>, which keeps each Scalar referenced until the call
/// returns; ScalarLifetimeTests binds the sources and fails on any number converted to a Scalar, and on any call of a
/// TorchSharp method that converts one inside (found in TorchSharp's IL: one-argument add, square, arange(stop), …).
/// </summary>
public static class TensorLifetime
{
    /// <summary>Runs <paramref name="work"/> in a dispose scope: its tensors live until it returns, then are freed.</summary>
    public static T InScope<T>(Func<T> work)
    {
        using var scope = torch.NewDisposeScope();
        return work();
    }
}
