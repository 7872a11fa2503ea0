using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Models;

/// <summary>
/// A safetensors file written from tensors that arrive one at a time in any order, none of them kept: each is appended
/// (converted to its stored dtype) to a spill file as it comes, and <see cref="Finish"/> writes the header and copies
/// the bytes in name order, so the file is byte for byte what <see cref="SafetensorsFile.Write"/> writes for the same
/// tensors sorted by name.
/// </summary>
public sealed class SafetensorsSpill : IDisposable
{
    private readonly string _spillPath;
    private readonly FileStream _spill;
    private readonly Dictionary<string, (ScalarType Stored, long[] Shape, long Offset, long Bytes)> _entries = new(StringComparer.Ordinal);

    /// <param name="spillPath">where the bytes wait (deleted on dispose); the caller registers it as a partial output.</param>
    public SafetensorsSpill(string spillPath)
    {
        _spillPath = spillPath;
        _spill = new FileStream(spillPath, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
    }

    public IReadOnlyCollection<string> Names => _entries.Keys;

    /// <summary>Appends one tensor, stored as <paramref name="stored"/> (floating-point tensors; others keep their type).</summary>
    public void Add(string name, Tensor tensor, ScalarType stored)
    {
        if (_entries.ContainsKey(name)) throw new ArgumentException($"tensor '{name}' added twice");
        var type = is_floating_point(tensor.dtype) ? stored : tensor.dtype;
        long offset = _spill.Position;
        SafetensorsFile.WriteData(_spill, tensor, type);
        _entries[name] = (type, tensor.shape, offset, _spill.Position - offset);
    }

    /// <summary>A tensor added earlier, in its stored dtype (a spill of work in progress read back, e.g. by the streamed refit).</summary>
    public Tensor Read(string name)
    {
        if (!_entries.TryGetValue(name, out var e)) throw new ArgumentException($"no tensor '{name}' in the spill {_spillPath}");
        var t = torch.empty(e.Shape, dtype: e.Stored);
        long end = _spill.Position;   // where the next Add writes
        try
        {
            _spill.Flush();
            _spill.Seek(e.Offset, SeekOrigin.Begin);
            SafetensorsFile.ForEachChunk(t, span => _spill.ReadExactly(span));
        }
        catch
        {
            t.Dispose();
            throw;
        }
        finally
        {
            _spill.Seek(end, SeekOrigin.Begin);
        }
        return t;
    }

    /// <summary>Writes the file at <paramref name="path"/> (atomically) with every tensor added, in name order.</summary>
    public void Finish(string path, IReadOnlyDictionary<string, string>? metadata)
    {
        var order = _entries.Keys.Order(StringComparer.Ordinal).ToList();
        var header = SafetensorsFile.Header(order.Select(n => (n, _entries[n].Stored, _entries[n].Shape)), metadata);
        _spill.Flush();
        AtomicFile.Write(path, stream =>
        {
            SafetensorsFile.WriteHeader(stream, header);
            var buffer = new byte[1 << 20];
            foreach (var n in order)
            {
                var e = _entries[n];
                _spill.Seek(e.Offset, SeekOrigin.Begin);
                for (long left = e.Bytes; left > 0;)
                {
                    int read = _spill.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
                    if (read <= 0) throw new IOException($"{_spillPath}: ended early");
                    stream.Write(buffer, 0, read);
                    left -= read;
                }
            }
        });
    }

    public void Dispose()
    {
        _spill.Dispose();
        File.Delete(_spillPath);
    }
}
