using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare;

/// <summary>
/// Tensor arithmetic with a number, through an explicit <see cref="Scalar"/> that is disposed after the call. A number
/// passed straight to TorchSharp (<c>t.mul(0.5)</c>) becomes a Scalar that no dispose scope tracks and nothing keeps
/// alive during the native call: a garbage collection on another thread can finalize it while libtorch reads it
/// ("Unknown scalar type", see <see cref="TensorLifetime"/>). Here the Scalar is referenced until the call has
/// returned. The Scalar's type is the number's (long for integers, double otherwise), as with the implicit conversion,
/// so results are bit for bit the same.
/// </summary>
public static class Scalars
{
    /// <summary>
    /// alpha = 1 for tensor + tensor and tensor − tensor: TorchSharp's one-argument add/sub pass an implicit Scalar 1 that
    /// a collection on another thread can finalize mid-call (seen under GEOSHARE_STRESS_ALLOC in Calibration's add_).
    /// A static field keeps this one alive for the process; a Scalar is immutable, so threads share it.
    /// </summary>
    public static readonly Scalar One = 1L.ToScalar();

    public static Tensor MulScalar(this Tensor t, double v) { using var s = v.ToScalar(); return t.mul(s); }
    public static Tensor MulScalar(this Tensor t, long v) { using var s = v.ToScalar(); return t.mul(s); }
    public static Tensor MulScalar_(this Tensor t, double v) { using var s = v.ToScalar(); return t.mul_(s); }
    public static Tensor MulScalar_(this Tensor t, long v) { using var s = v.ToScalar(); return t.mul_(s); }
    public static Tensor DivScalar(this Tensor t, double v) { using var s = v.ToScalar(); return t.div(s); }
    public static Tensor DivScalar(this Tensor t, long v) { using var s = v.ToScalar(); return t.div(s); }
    public static Tensor DivScalar_(this Tensor t, double v) { using var s = v.ToScalar(); return t.div_(s); }
    public static Tensor DivScalar_(this Tensor t, long v) { using var s = v.ToScalar(); return t.div_(s); }
    // add with one Scalar passes TorchSharp's implicit alpha = 1, a temporary the GC may finalize mid-call: give One.
    public static Tensor AddScalar(this Tensor t, double v) { using var s = v.ToScalar(); return t.add(s, One); }
    public static Tensor AddScalar(this Tensor t, long v) { using var s = v.ToScalar(); return t.add(s, One); }
    public static Tensor AddScalar_(this Tensor t, double v) { using var s = v.ToScalar(); return t.add_(s, One); }
    public static Tensor SubScalar(this Tensor t, double v) { using var s = v.ToScalar(); return t.sub(s); }
    public static Tensor SubScalar_(this Tensor t, long v) { using var s = v.ToScalar(); return t.sub_(s); }
    public static Tensor ClampMin(this Tensor t, double v) { using var s = v.ToScalar(); return t.clamp_min(s); }
    public static Tensor PowScalar(this Tensor t, long exponent) { using var s = exponent.ToScalar(); return t.pow(s); }
    public static Tensor FillScalar_(this Tensor t, double v) { using var s = v.ToScalar(); return t.fill_(s); }
    public static Tensor NeScalar(this Tensor t, long v) { using var s = v.ToScalar(); return t.ne(s); }
    public static Tensor MaskedFillScalar(this Tensor t, Tensor mask, double v) { using var s = v.ToScalar(); return t.masked_fill(mask, s); }

    /// <summary>
    /// <c>base ^ t</c> elementwise, for a number base: as a float64 0-dim tensor (what TorchSharp's implicit conversion
    /// makes of a double here; it does not widen a float32 exponent), freed after the call.
    /// </summary>
    public static Tensor Pow(double @base, Tensor exponent) { using var b = torch.tensor(@base); return torch.pow(b, exponent); }

    /// <summary>A tensor of <paramref name="size"/> elements, all <paramref name="value"/>.</summary>
    public static Tensor Full(long size, double value, ScalarType dtype) { using var s = value.ToScalar(); return torch.full([size], s, dtype: dtype); }

    /// <summary>0, 1, …, stop − 1 (by the three-Scalar overload: the one-Scalar one makes its start and step inside).</summary>
    public static Tensor Arange(long stop, ScalarType dtype, Device? device = null) => Arange(0, stop, 1, dtype, device);

    /// <summary>start, start + step, … while before stop.</summary>
    public static Tensor Arange(long start, long stop, long step, ScalarType? dtype = null, Device? device = null)
    {
        using var a = start.ToScalar();
        using var b = stop.ToScalar();
        using var c = step.ToScalar();
        return torch.arange(a, b, c, dtype: dtype, device: device);
    }
}
