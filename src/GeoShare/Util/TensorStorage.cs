using static TorchSharp.torch;

namespace GeoShare;

public static class TensorStorage
{
    /// <summary>Address of the storage behind a tensor: equal for tensors that share memory.</summary>
    public static IntPtr Pointer(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => t.storage<float>().data_ptr(),
        ScalarType.Float64 => t.storage<double>().data_ptr(),
        ScalarType.Int64 => t.storage<long>().data_ptr(),
        ScalarType.Float16 or ScalarType.BFloat16 => StartOfStorage(t),
        _ => throw new ArgumentException($"storage pointer for {t.dtype} not supported"),
    };

    /// <summary>The first element's address less the tensor's offset into its storage (16-bit floats have no typed storage accessor).</summary>
    private static unsafe IntPtr StartOfStorage(Tensor t)
    {
        if (t.numel() == 0) return IntPtr.Zero;
        if (!t.is_contiguous()) throw new ArgumentException("storage pointer of a non-contiguous 16-bit tensor not supported");
        using var first = t.flatten().narrow(0, 0, 1);
        fixed (byte* p = first.bytes) return (IntPtr)p - (nint)(t.storage_offset() * t.element_size());
    }
}
