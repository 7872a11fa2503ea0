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
        _ => throw new ArgumentException($"storage pointer for {t.dtype} not supported"),
    };
}
