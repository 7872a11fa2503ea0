using System.Buffers.Binary;
using System.IO.Compression;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Data;

/// <summary>Images and labels of one Fashion-MNIST split, read from the IDX files (gzip or plain).</summary>
public sealed class ImageDataset
{
    public string Source { get; }
    public int Count { get; }
    public int Height { get; }
    public int Width { get; }
    private readonly byte[] _pixels;
    private readonly byte[] _labels;

    private ImageDataset(string source, byte[] pixels, byte[] labels, int count, int height, int width)
    {
        Source = source;
        _pixels = pixels;
        _labels = labels;
        Count = count;
        Height = height;
        Width = width;
    }

    public const string DefaultFolder = "/usr/share/datasets/fashion-mnist";
    /// <summary>Fashion-MNIST's classes (labels 0..9).</summary>
    public const int Classes = 10;
    /// <summary>Largest IDX file read, decompressed (the training images are 47 MB).</summary>
    public const long IdxLimit = 256L << 20;

    /// <summary>Loads split "t10k" (test) or "train" from a folder holding {split}-images-idx3-ubyte[.gz] and labels.</summary>
    public static ImageDataset LoadFashionMnist(string dir, string split)
    {
        if (!Directory.Exists(dir)) throw BadInputException.For(dir, "Fashion-MNIST folder not found (Debian: apt-get install dataset-fashion-mnist)");
        string images = Find(dir, $"{split}-images-idx3-ubyte");
        string labels = Find(dir, $"{split}-labels-idx1-ubyte");
        var (imgDims, pixels) = ReadIdx(images, 0x803, 3);
        var (lblDims, lbl) = ReadIdx(labels, 0x801, 1);
        if (imgDims[0] != lblDims[0]) throw BadInputException.For(labels, $"{lblDims[0]} labels for {imgDims[0]} images");
        if (imgDims[0] == 0) throw BadInputException.For(images, "holds no images");
        for (int i = 0; i < lbl.Length; i++)
            if (lbl[i] >= Classes) throw BadInputException.For(labels, $"label {lbl[i]} of image {i} is outside the {Classes} classes 0..{Classes - 1}");
        return new ImageDataset(images, pixels, lbl, imgDims[0], imgDims[1], imgDims[2]);
    }

    private static string Find(string dir, string stem)
    {
        foreach (var name in new[] { stem + ".gz", stem })
        {
            string p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        throw BadInputException.For(Path.Combine(dir, stem + ".gz"), "file not found");
    }

    private static (int[] Dims, byte[] Data) ReadIdx(string path, int magic, int rank)
    {
        byte[] raw;
        try
        {
            var stored = BoundedFile.ReadAllBytes(path, IdxLimit, "Fashion-MNIST file");
            if (path.EndsWith(".gz"))
            {
                using var gz = new GZipStream(new MemoryStream(stored), CompressionMode.Decompress);
                using var ms = new MemoryStream();
                var buffer = new byte[1 << 16];
                for (int n; (n = gz.Read(buffer)) > 0;)
                {
                    if (ms.Length + n > IdxLimit) throw BadInputException.For(path, $"decompresses to more than the limit of {IdxLimit:N0} bytes");
                    ms.Write(buffer, 0, n);
                }
                raw = ms.ToArray();
            }
            else raw = stored;
        }
        catch (InvalidDataException) { throw BadInputException.For(path, "corrupt gzip data"); }
        int header = 4 + 4 * rank;
        if (raw.Length < header) throw BadInputException.For(path, "truncated IDX header");
        int m = BinaryPrimitives.ReadInt32BigEndian(raw);
        if (m != magic) throw BadInputException.For(path, $"not an IDX file of rank {rank} unsigned bytes (magic 0x{m:x8})");
        var dims = new int[rank];
        long size = 1;
        for (int i = 0; i < rank; i++)
        {
            dims[i] = BinaryPrimitives.ReadInt32BigEndian(raw.AsSpan(4 + 4 * i));
            if (dims[i] < 0) throw BadInputException.For(path, $"IDX dimension {i} is negative ({dims[i]})");
            size *= dims[i];
            if (size > IdxLimit) throw BadInputException.For(path, $"IDX header promises more than {IdxLimit:N0} bytes");
        }
        if (raw.Length - header != size) throw BadInputException.For(path, $"IDX header promises {size} bytes of data, file has {raw.Length - header}");
        return (dims, raw[header..]);
    }

    public int Label(int index) => _labels[index];

    /// <summary>Images [n, 1, H, W] normalised by <paramref name="pre"/>, and their labels [n].</summary>
    public (Tensor Pixels, Tensor Labels) Batch(IReadOnlyList<int> indices, ImagePreprocessor pre, ScalarType dtype = ScalarType.Float32)
    {
        int hw = Height * Width;
        var data = new float[indices.Count * hw];
        var labels = new long[indices.Count];
        for (int i = 0; i < indices.Count; i++)
        {
            int idx = indices[i];
            for (int j = 0; j < hw; j++) data[i * hw + j] = pre.Normalize(_pixels[idx * hw + j]);
            labels[i] = _labels[idx];
        }
        var pixels = torch.tensor(data, [indices.Count, 1, Height, Width]);
        return (dtype == ScalarType.Float32 ? pixels : pixels.to_type(dtype), torch.tensor(labels));
    }

    public int[] Select(int count, int stride, int first = 0)
    {
        if (count <= 0) throw new UsageException($"the number of images must be positive (got {count})");
        if (stride <= 0) throw new UsageException($"the image stride must be positive (got {stride})");
        long last = first + (long)(count - 1) * stride;
        if (last >= Count) throw new UsageException($"{count} images with stride {stride} need {last + 1} images, {Source} has {Count}");
        return Enumerable.Range(0, count).Select(i => first + i * stride).ToArray();
    }
}

/// <summary>preprocessor_config.json's rescale and normalisation for single-channel images (no resize).</summary>
public sealed record ImagePreprocessor(double RescaleFactor, float Mean, float Std)
{
    public float Normalize(byte pixel) => (float)((pixel * RescaleFactor - Mean) / Std);

    public static ImagePreprocessor Load(string modelDir)
    {
        string path = Path.Combine(modelDir, "preprocessor_config.json");
        if (!FileLinks.ExistsOrIsLink(path)) throw BadInputException.For(path, "missing (the ViT's normalisation comes from it)");
        FileLinks.CheckLink(path);
        try
        {
            using var doc = JsonDocument.Parse(BoundedFile.ReadAllText(path, BoundedFile.JsonLimit, "preprocessor config"));
            var r = doc.RootElement;
            bool rescale = !r.TryGetProperty("do_rescale", out var dr) || dr.GetBoolean();
            bool normalize = !r.TryGetProperty("do_normalize", out var dn) || dn.GetBoolean();
            double factor = rescale ? (r.TryGetProperty("rescale_factor", out var rf) ? rf.GetDouble() : 1.0 / 255) : 1.0;
            float mean = 0, std = 1;
            if (normalize)
            {
                var m = r.GetProperty("image_mean");
                var s = r.GetProperty("image_std");
                if (m.GetArrayLength() != 1 || s.GetArrayLength() != 1)
                    throw BadInputException.For(path, "image_mean/image_std must have one value (single-channel images)");
                mean = m[0].GetSingle();
                std = s[0].GetSingle();
                if (!(std > 0)) throw BadInputException.For(path, "image_std must be positive");
            }
            if (!(factor > 0 && double.IsFinite(factor)) || !float.IsFinite(mean) || !float.IsFinite(std))
                throw BadInputException.For(path, "rescale_factor, image_mean and image_std must be finite (rescale_factor and image_std positive)");
            return new ImagePreprocessor(factor, mean, std);
        }
        catch (JsonException e) { throw BadInputException.For(path, $"not valid JSON ({BoundedFile.JsonProblem(e)})"); }
        catch (KeyNotFoundException) { throw BadInputException.For(path, "missing image_mean or image_std"); }
        catch (InvalidOperationException) { throw BadInputException.For(path, "malformed preprocessor config"); }
        catch (FormatException) { throw BadInputException.For(path, "a number of the preprocessor config is out of range"); }
    }
}
