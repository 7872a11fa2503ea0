using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Models;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Reader for the safetensors format (8-byte little-endian header length, JSON header, flat byte buffer).
/// The header is validated completely when the file is opened, so a lying or truncated file is reported
/// with its name before any tensor is read.
/// </summary>
public sealed class SafetensorsFile
{
    private const long MaxHeaderBytes = 100_000_000;
    private static readonly Dictionary<string, int> ElementBytes = new()
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2,
        ["I64"] = 8, ["I32"] = 4, ["I16"] = 2, ["I8"] = 1, ["U8"] = 1, ["BOOL"] = 1,
    };

    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    private readonly long _dataStart;

    private SafetensorsFile(string path, Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata, long dataStart)
    {
        Path = path;
        Entries = entries;
        Metadata = metadata;
        _dataStart = dataStart;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw BadInputException.For(path, "file not found");
        long length = new FileInfo(path).Length;
        if (length < 8) throw BadInputException.For(path, $"truncated safetensors file ({length} bytes, no header)");
        using var fs = File.OpenRead(path);
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        long headerLen = (long)BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen <= 0 || headerLen > MaxHeaderBytes)
            throw BadInputException.For(path, $"not a safetensors file (header length {headerLen})");
        if (8 + headerLen > length)
            throw BadInputException.For(path, $"truncated safetensors file: header needs {8 + headerLen} bytes, file has {length}");
        var header = new byte[headerLen];
        fs.ReadExactly(header);
        long dataLen = length - 8 - headerLen;

        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e)
        {
            // At most ~80 characters of the header, escaped: it may be megabytes of anything.
            throw BadInputException.For(path, $"safetensors header is not valid JSON ({BoundedFile.JsonProblem(e)}; it starts '{BoundedFile.Quote(header)}')");
        }

        var entries = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw BadInputException.For(path, "safetensors header is not a JSON object");
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                entries[prop.Name] = ParseEntry(path, prop);
            }
        }

        // The byte buffer must be covered exactly: entries in order, no overlap, no hole, nothing past the end.
        long expected = 0;
        foreach (var e in entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin != expected)
                throw BadInputException.For(path, e.Begin < expected
                    ? $"tensor '{BoundedFile.Quote(e.Name)}' overlaps another tensor (offset {e.Begin} < {expected})"
                    : $"header leaves a gap before tensor '{BoundedFile.Quote(e.Name)}' (offset {e.Begin}, expected {expected})");
            expected = e.End;
        }
        if (expected > dataLen)
            throw BadInputException.For(path, $"truncated safetensors file: tensors need {expected} data bytes, file has {dataLen}");
        if (expected < dataLen)
            throw BadInputException.For(path, $"header offsets end at {expected} but the data section has {dataLen} bytes");

        return new SafetensorsFile(path, entries, metadata, 8 + headerLen);
    }

    private static SafetensorsEntry ParseEntry(string path, JsonProperty prop)
    {
        string name = BoundedFile.Quote(prop.Name);
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object
            || !v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String
            || !v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array
            || !v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw BadInputException.For(path, $"tensor '{name}' has a malformed header entry");
        string dtype = dt.GetString()!;
        if (!ElementBytes.TryGetValue(dtype, out int eb))
            throw BadInputException.For(path, $"tensor '{name}' has unsupported dtype {BoundedFile.Quote(dtype, 20)}");
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw BadInputException.For(path, $"tensor '{name}' has an invalid shape (dimensions are non-negative integers, got {BoundedFile.Quote(d.GetRawText(), 40)})");
            shape[i++] = dim;
        }
        if (off[0].ValueKind != JsonValueKind.Number || off[1].ValueKind != JsonValueKind.Number
            || !off[0].TryGetInt64(out long begin) || !off[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw BadInputException.For(path, $"tensor '{name}' has invalid data_offsets (two non-negative integers, begin ≤ end, got {BoundedFile.Quote(off.GetRawText(), 40)})");
        // The byte size in checked arithmetic: [2^32, 2^32, 2^32] must not wrap around to 0 bytes.
        long bytes = eb;
        try { foreach (long dim in shape) bytes = checked(bytes * dim); }
        catch (OverflowException)
        {
            throw BadInputException.For(path, $"tensor '{name}' has shape {FormatShape(shape)}, whose size in bytes overflows (the file has {new FileInfo(path).Length:N0} bytes)");
        }
        if (bytes != end - begin)
            throw BadInputException.For(path, $"tensor '{name}' is {dtype}{FormatShape(shape)} = {bytes} bytes but its data_offsets span {end - begin}");
        return new SafetensorsEntry(prop.Name, dtype, shape, begin, end);
    }

    public static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>Reads a tensor and converts it to <paramref name="dtype"/> (float types) or keeps its integer type (null).</summary>
    public Tensor Read(string name, ScalarType? dtype = null)
    {
        if (!Entries.TryGetValue(name, out var e)) throw BadInputException.For(Path, $"no tensor named '{name}'");
        var bytes = new byte[e.End - e.Begin];
        using (var fs = File.OpenRead(Path))
        {
            fs.Seek(_dataStart + e.Begin, SeekOrigin.Begin);
            fs.ReadExactly(bytes);
        }
        return FromBytes(e, bytes, dtype);
    }

    private Tensor FromBytes(SafetensorsEntry e, byte[] bytes, ScalarType? dtype)
    {
        switch (e.DType)
        {
            case "I64": return torch.tensor(MemoryMarshal.Cast<byte, long>(bytes).ToArray(), e.Shape);
            case "I32": return torch.tensor(MemoryMarshal.Cast<byte, int>(bytes).ToArray(), e.Shape);
            case "U8": case "BOOL": return torch.tensor(bytes, e.Shape);
        }
        var target = dtype ?? ScalarType.Float32;
        if (target == ScalarType.Float64)
        {
            var d = new double[e.Elements];
            switch (e.DType)
            {
                case "F64": MemoryMarshal.Cast<byte, double>(bytes).CopyTo(d); break;
                case "F32": { var s = MemoryMarshal.Cast<byte, float>(bytes); for (int i = 0; i < d.Length; i++) d[i] = s[i]; break; }
                case "F16": { var s = MemoryMarshal.Cast<byte, Half>(bytes); for (int i = 0; i < d.Length; i++) d[i] = (double)s[i]; break; }
                case "BF16": { var s = MemoryMarshal.Cast<byte, ushort>(bytes); for (int i = 0; i < d.Length; i++) d[i] = BitConverter.Int32BitsToSingle(s[i] << 16); break; }
                default: throw BadInputException.For(Path, $"tensor '{e.Name}' of dtype {e.DType} cannot be read as float");
            }
            return torch.tensor(d, e.Shape);
        }
        var f = new float[e.Elements];
        switch (e.DType)
        {
            case "F64": { var s = MemoryMarshal.Cast<byte, double>(bytes); for (int i = 0; i < f.Length; i++) f[i] = (float)s[i]; break; }
            case "F32": MemoryMarshal.Cast<byte, float>(bytes).CopyTo(f); break;
            case "F16": { var s = MemoryMarshal.Cast<byte, Half>(bytes); for (int i = 0; i < f.Length; i++) f[i] = (float)s[i]; break; }
            case "BF16": { var s = MemoryMarshal.Cast<byte, ushort>(bytes); for (int i = 0; i < f.Length; i++) f[i] = BitConverter.Int32BitsToSingle(s[i] << 16); break; }
            default: throw BadInputException.For(Path, $"tensor '{e.Name}' of dtype {e.DType} cannot be read as float");
        }
        var t = torch.tensor(f, e.Shape);
        if (target == ScalarType.Float32) return t;
        using (t) return t.to_type(target);
    }

    /// <summary>
    /// Writes tensors (float32/float64/int64) to <paramref name="path"/> atomically: a temporary file in the
    /// same folder, renamed over the target when complete.
    /// </summary>
    public static void Write(string path, IReadOnlyList<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        var blobs = new List<byte[]>();
        foreach (var (name, tensor) in tensors)
        {
            using var c = tensor.detach().contiguous().cpu();
            (string dtype, byte[] data) = c.dtype switch
            {
                ScalarType.Float32 => ("F32", MemoryMarshal.AsBytes(c.data<float>().ToArray().AsSpan()).ToArray()),
                ScalarType.Float64 => ("F64", MemoryMarshal.AsBytes(c.data<double>().ToArray().AsSpan()).ToArray()),
                ScalarType.Int64 => ("I64", MemoryMarshal.AsBytes(c.data<long>().ToArray().AsSpan()).ToArray()),
                _ => throw new ArgumentException($"cannot write tensor '{name}' of type {c.dtype}"),
            };
            header[name] = new { dtype, shape = c.shape, data_offsets = new[] { offset, offset + data.Length } };
            offset += data.Length;
            blobs.Add(data);
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        int pad = (8 - json.Length % 8) % 8;
        var headerBytes = new byte[json.Length + pad];
        json.CopyTo(headerBytes, 0);
        for (int i = json.Length; i < headerBytes.Length; i++) headerBytes[i] = (byte)' ';
        AtomicFile.Write(path, stream =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)headerBytes.Length);
            stream.Write(len);
            stream.Write(headerBytes);
            foreach (var b in blobs) stream.Write(b);
        });
    }
}
