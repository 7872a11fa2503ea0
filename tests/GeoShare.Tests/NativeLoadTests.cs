using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class NativeLoadTests
{
    [Fact]
    public void LibTorchLoadsAndComputes()
    {
        using var a = Scalars.Arange(6, ScalarType.Float64).reshape(2, 3);
        using var p = a.matmul(a.t());
        Assert.Equal(new double[] { 5, 14, 14, 50 }, p.data<double>().ToArray());
    }

    [Fact]
    public void OutputCopyOfLibTorchSharpHasTheGlibcxxRequirementMarkedWeak()
    {
        // The build patched the copy beside this test assembly; the loader would refuse it otherwise on Debian 12.
        string lib = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");
        Assert.True(File.Exists(lib), lib);
        var (found, weak) = ElfVersionNeed(File.ReadAllBytes(lib), "GLIBCXX_3.4.32");
        Assert.True(found, "no GLIBCXX_3.4.32 entry in .gnu.version_r: the reader is broken or TorchSharp changed (then revisit build/TorchSharpNative.targets)");
        Assert.True(weak, "GLIBCXX_3.4.32 requirement is not weak");
    }

    /// <summary>Reads the flags of a version requirement from .gnu.version_r (independently of the build task).</summary>
    private static (bool Found, bool Weak) ElfVersionNeed(byte[] b, string version)
    {
        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A), shnum = BitConverter.ToUInt16(b, 0x3C);
        for (int i = 0; i < shnum; i++)
        {
            int sh = (int)(shoff + i * shentsize);
            if (BitConverter.ToUInt32(b, sh + 4) != 0x6ffffffe) continue;
            int off = (int)BitConverter.ToInt64(b, sh + 24);
            int link = (int)BitConverter.ToUInt32(b, sh + 40), count = (int)BitConverter.ToUInt32(b, sh + 44);
            int str = (int)BitConverter.ToInt64(b, (int)(shoff + link * shentsize) + 24);
            for (int n = 0, vn = off; n < count; n++, vn += (int)BitConverter.ToUInt32(b, vn + 12))
                for (int a = 0, aux = vn + (int)BitConverter.ToUInt32(b, vn + 8); a < BitConverter.ToUInt16(b, vn + 2); a++, aux += (int)BitConverter.ToUInt32(b, aux + 12))
                {
                    int name = str + (int)BitConverter.ToUInt32(b, aux + 8), end = name;
                    while (b[end] != 0) end++;
                    if (System.Text.Encoding.ASCII.GetString(b, name, end - name) == version)
                        return (true, (BitConverter.ToUInt16(b, aux + 4) & 2) != 0);
                }
        }
        return (false, false);
    }

    [Fact]
    public void EveryTestRunsInADisposeScope()
    {
        // The assembly's TensorScopePerTest attribute: without it, temporaries here could be finalized mid-call.
        var stats = DisposeScopeManager.Statistics.TensorStatistics;
        long outside = stats.CreatedOutsideScopeCount, inside = stats.CreatedInScopeCount;
        var t = torch.zeros(3).AddScalar(1L);
        Assert.Equal(outside, stats.CreatedOutsideScopeCount);
        Assert.Equal(inside + 2, stats.CreatedInScopeCount);
    }
}
