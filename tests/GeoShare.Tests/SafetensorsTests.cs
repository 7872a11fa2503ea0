using System.Buffers.Binary;
using System.Text;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Tests;

public class SafetensorsTests
{
    [Fact]
    public void WriteThenReadIsExactForFloat32Float64AndInt64()
    {
        using var tmp = new TempDir();
        var gen = new Generator(7);
        var a = torch.randn([3, 5], generator: gen);
        var b = torch.randn([2, 2, 2], dtype: ScalarType.Float64, generator: gen);
        var c = torch.tensor(new long[] { 1, -2, 3 });
        string path = tmp.File("t.safetensors");
        SafetensorsFile.Write(path, [("a", a), ("b", b), ("c", c)], new Dictionary<string, string> { ["format"] = "pt" });
        var f = SafetensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.True(f.Read("a", ScalarType.Float32).eq(a).all().item<bool>());
        Assert.True(f.Read("b", ScalarType.Float64).eq(b).all().item<bool>());
        Assert.Equal(new long[] { 1, -2, 3 }, f.Read("c").data<long>().ToArray());
        Assert.Empty(Directory.GetFiles(tmp.Path, "*.tmp", SearchOption.AllDirectories));
    }

    [Fact]
    public void ReadsHalfAndBFloat16()
    {
        using var tmp = new TempDir();
        float[] values = [1.5f, -2.25f, 0.0009765625f, 384f];
        var f16 = values.SelectMany(v => BitConverter.GetBytes((Half)v)).ToArray();
        var bf16 = values.SelectMany(v => BitConverter.GetBytes((ushort)(BitConverter.SingleToInt32Bits(v) >> 16))).ToArray();
        string path = tmp.File("h.safetensors");
        WriteRaw(path, $"{{\"h\":{{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]}},\"g\":{{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}}}", [.. f16, .. bf16]);
        var file = SafetensorsFile.Open(path);
        Assert.Equal(values, file.Read("h", ScalarType.Float32).data<float>().ToArray());
        Assert.Equal(values.Select(v => (double)v), file.Read("g", ScalarType.Float64).data<double>().ToArray());
    }

    [Theory]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps")]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "truncated")]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "data_offsets span 8")]
    [InlineData("{\"x\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unsupported dtype Q4")]
    [InlineData("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "gap")]
    [InlineData("{not json", 0, "not valid JSON")]
    public void RejectsInconsistentHeaders(string header, int dataBytes, string problem)
    {
        using var tmp = new TempDir();
        string path = tmp.File("bad.safetensors");
        WriteRaw(path, header, new byte[dataBytes]);
        var e = Assert.Throws<BadInputException>(() => SafetensorsFile.Open(path));
        Assert.StartsWith(path + ":", e.Message);
        Assert.Contains(problem, e.Message);
    }

    private static void WriteRaw(string path, string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var len = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)h.Length);
        File.WriteAllBytes(path, [.. len, .. h, .. data]);
    }
}
