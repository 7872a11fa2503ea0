using SkiaSharp;

namespace GeoShare.Tests;

/// <summary>A PNG file that holds a picture: the signature, a plausible IHDR size, and pixels that are not one flat colour.</summary>
public static class PngAssert
{
    private static readonly byte[] Signature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    public static void IsPicture(string path, int minWidth = 200, int minHeight = 150)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 33, $"{path}: {bytes.Length} bytes");
        Assert.True(bytes.AsSpan(0, 8).SequenceEqual(Signature), $"{path}: not a PNG signature");
        Assert.True(bytes.AsSpan(12, 4).SequenceEqual("IHDR"u8), $"{path}: the first chunk is not IHDR");
        int width = (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19];
        int height = (bytes[20] << 24) | (bytes[21] << 16) | (bytes[22] << 8) | bytes[23];
        Assert.True(width >= minWidth && width <= 10_000 && height >= minHeight && height <= 10_000, $"{path}: {width}×{height}");

        using var bitmap = SKBitmap.Decode(bytes);
        Assert.True(bitmap is not null, $"{path}: does not decode");
        Assert.Equal((width, height), (bitmap.Width, bitmap.Height));
        // Not blank: beside the background (the most common colour) a real share of ink, in several colours.
        var counts = new Dictionary<uint, int>();
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                uint c = (uint)bitmap.GetPixel(x, y);
                counts[c] = counts.GetValueOrDefault(c) + 1;
            }
        double ink = 1 - (double)counts.Values.Max() / ((long)width * height);
        Assert.True(ink > 0.01, $"{path}: {100 * ink:F2}% of the pixels differ from the background");
        Assert.True(counts.Count >= 8, $"{path}: only {counts.Count} distinct colours");
    }
}

public class PngAssertTests
{
    private static string Write(TempDir tmp, string name, Action<SKCanvas> draw, int width = 400, int height = 300)
    {
        using var bitmap = new SKBitmap(width, height);
        using (var canvas = new SKCanvas(bitmap))
        {
            canvas.Clear(SKColors.White);
            draw(canvas);
        }
        string path = tmp.File(name);
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(path, data.ToArray());
        return path;
    }

    [Fact]
    public void BlankTinyOrTruncatedPicturesAreRejectedAndADrawnOneAccepted()
    {
        using var tmp = new TempDir();
        string drawn = Write(tmp, "drawn.png", c =>
        {
            using var paint = new SKPaint { StrokeWidth = 3, IsAntialias = true };
            foreach (var (colour, i) in new[] { SKColors.Red, SKColors.Blue, SKColors.Green, SKColors.Black }.Select((c, i) => (c, i)))
            {
                paint.Color = colour;
                c.DrawLine(20, 20 + 60 * i, 380, 280 - 40 * i, paint);
                c.DrawRect(30 + 80 * i, 200, 40, 60, paint);
            }
        });
        PngAssert.IsPicture(drawn);
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => PngAssert.IsPicture(Write(tmp, "blank.png", _ => { })));
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => PngAssert.IsPicture(Write(tmp, "small.png", _ => { }, 20, 10)));
        string truncated = tmp.File("truncated.png");
        File.WriteAllBytes(truncated, File.ReadAllBytes(drawn)[..200]);
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => PngAssert.IsPicture(truncated));
        string notPng = tmp.File("not.png");
        File.WriteAllBytes(notPng, [.. "\x89PNX"u8.ToArray(), .. File.ReadAllBytes(drawn)[4..]]);
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => PngAssert.IsPicture(notPng));
    }
}
