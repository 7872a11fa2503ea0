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
        // A symbolic link (the Hugging Face cache's snapshots/<rev>/x -> ../../blobs/<sha>) is checked by its target.
        long length = FileLinks.Resolve(path).Length;
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

    /// <summary>The tensor type of a safetensors dtype string (F16 → Float16, BF16 → BFloat16, …).</summary>
    public static ScalarType ScalarTypeOf(string dtype) => dtype switch
    {
        "F64" => ScalarType.Float64, "F32" => ScalarType.Float32, "F16" => ScalarType.Float16, "BF16" => ScalarType.BFloat16,
        "I64" => ScalarType.Int64, "I32" => ScalarType.Int32, "I16" => ScalarType.Int16, "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte, "BOOL" => ScalarType.Bool,
        _ => throw new ArgumentException($"unsupported safetensors dtype {dtype}"),
    };

    /// <summary>The safetensors dtype string of a tensor type.</summary>
    public static string DTypeOf(ScalarType type) => type switch
    {
        ScalarType.Float64 => "F64", ScalarType.Float32 => "F32", ScalarType.Float16 => "F16", ScalarType.BFloat16 => "BF16",
        ScalarType.Int64 => "I64", ScalarType.Int32 => "I32", ScalarType.Int16 => "I16", ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8", ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"no safetensors dtype for {type}"),
    };

    public static bool IsFloat(string dtype) => dtype is "F64" or "F32" or "F16" or "BF16";

    // Spans over tensor memory hold at most int.MaxValue bytes; larger tensors are copied in pieces of this size.
    private const long ChunkBytes = 1L << 30;

    // A float tensor stored in another dtype than asked for passes through a staging buffer of this many elements:
    // the transient memory of a load is one such buffer, not a second copy of the tensor.
    private const long StagingElements = 1L << 20;

    /// <summary>
    /// Reads a tensor into a tensor of <paramref name="dtype"/> (float tensors; default float32) or of its own integer
    /// type. The bytes go from the file straight into the tensor's memory (no managed copy); a tensor stored in another
    /// float dtype is read a piece at a time into a small staging tensor of the file's dtype and converted into place.
    /// </summary>
    public Tensor Read(string name, ScalarType? dtype = null)
    {
        if (!Entries.TryGetValue(name, out var e)) throw BadInputException.For(Path, $"no tensor named '{name}'");
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors data is little-endian");
        var stored = ScalarTypeOf(e.DType);
        var target = IsFloat(e.DType) ? dtype ?? ScalarType.Float32 : stored;
        var result = torch.empty(e.Shape, dtype: target);
        try
        {
            using var fs = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1);
            fs.Seek(_dataStart + e.Begin, SeekOrigin.Begin);
            if (stored == target) ForEachChunk(result, span => fs.ReadExactly(span));
            else
            {
                using var flat = result.view(-1);
                // One size for every tensor, so that the allocator hands the same block back each time (sizes that
                // follow the tensors' left a trail of freed blocks of every size: 6 MB more resident for compressed GPT-2).
                using var staging = torch.empty(StagingElements, dtype: stored);
                for (long start = 0; start < e.Elements; start += StagingElements)
                {
                    long n = Math.Min(StagingElements, e.Elements - start);
                    using var src = staging.narrow(0, 0, n);
                    using var dst = flat.narrow(0, start, n);
                    fs.ReadExactly(src.bytes);
                    dst.copy_(src); // F16/BF16 → float32 and float32 → float64 are exact; F64 → F32 rounds to nearest
                }
            }
        }
        catch
        {
            result.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Calls <paramref name="action"/> on the bytes of a contiguous CPU tensor, in spans of at most <see cref="ChunkBytes"/>.</summary>
    internal static void ForEachChunk(Tensor t, SpanAction action)
    {
        long total = t.numel() * t.element_size();
        if (total == 0) return;
        if (total <= ChunkBytes) { action(t.bytes); return; }
        using var flat = t.view(-1);
        long perChunk = ChunkBytes / t.element_size();
        for (long start = 0; start < flat.numel(); start += perChunk)
        {
            using var piece = flat.narrow(0, start, Math.Min(perChunk, flat.numel() - start));
            action(piece.bytes);
        }
    }

    internal delegate void SpanAction(Span<byte> span);

    /// <summary>
    /// Writes tensors to <paramref name="path"/> atomically (a temporary file in the same folder, renamed over the target
    /// when complete), each in its own dtype (F64, F32, F16, BF16, integers), or every floating-point tensor converted to
    /// <paramref name="floatDType"/>. Tensors are converted and written one at a time: no whole-file buffer.
    /// </summary>
    public static void Write(string path, IReadOnlyList<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null,
        ScalarType? floatDType = null)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors data is little-endian");
        if (floatDType is { } fd && !torch.is_floating_point(fd)) throw new ArgumentException($"floatDType {fd} is not a floating-point type");
        ScalarType Stored(Tensor t) => torch.is_floating_point(t.dtype) && floatDType is { } f ? f : t.dtype;
        var headerBytes = Header(tensors.Select(t => (t.Name, Stored(t.Tensor), t.Tensor.shape)), metadata);
        AtomicFile.Write(path, stream =>
        {
            WriteHeader(stream, headerBytes);
            foreach (var (_, tensor) in tensors) WriteData(stream, tensor, Stored(tensor));
        });
    }

    /// <summary>The header of tensors laid out in the given order (offsets consecutive), padded to 8 bytes with spaces.</summary>
    internal static byte[] Header(IEnumerable<(string Name, ScalarType Stored, long[] Shape)> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var (name, stored, shape) in tensors)
        {
            string dtype;
            try { dtype = DTypeOf(stored); }
            catch (ArgumentException) { throw new ArgumentException($"cannot write tensor '{name}' of type {stored}"); }
            long bytes = shape.Aggregate(1L, (a, b) => a * b) * stored.ElementSize();
            header[name] = new { dtype, shape, data_offsets = new[] { offset, offset + bytes } };
            offset += bytes;
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        int pad = (8 - json.Length % 8) % 8;
        var headerBytes = new byte[json.Length + pad];
        json.CopyTo(headerBytes, 0);
        for (int i = json.Length; i < headerBytes.Length; i++) headerBytes[i] = (byte)' ';
        return headerBytes;
    }

    internal static void WriteHeader(Stream stream, byte[] headerBytes)
    {
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)headerBytes.Length);
        stream.Write(len);
        stream.Write(headerBytes);
    }

    /// <summary>A tensor's bytes in <paramref name="stored"/>, converted a tensor at a time.</summary>
    internal static void WriteData(Stream stream, Tensor tensor, ScalarType stored)
    {
        using var scope = torch.NewDisposeScope();
        var c = tensor.detach().cpu().to_type(stored).contiguous();
        ForEachChunk(c, span => stream.Write(span));
    }
}
