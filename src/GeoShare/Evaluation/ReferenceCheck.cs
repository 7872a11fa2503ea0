using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Evaluation;

/// <summary>How a model's logits compare with reference logits another implementation computed on the same inputs.</summary>
public sealed record ReferenceComparison(
    string Input, long[] InputShape, long[] LogitsShape, double RelativeError, double MaxAbsDifference, double ReferenceNorm, double Tolerance)
{
    public bool Matches => RelativeError <= Tolerance;
}

/// <summary>
/// Checks a model against reference logits: a safetensors file with <c>input_ids</c> (I64 [batch, seq]) or
/// <c>pixel_values</c> (F32 [batch, channels, height, width]) and <c>logits</c> (F32 [batch, seq, vocab] or
/// [batch, labels]), the layout of assets/references/*_logits.safetensors and of what transformers writes with
/// safetensors.torch.save_file. Every shape is checked before the model sees the inputs.
/// </summary>
public static class ReferenceCheck
{
    /// <summary>‖Δ‖/‖ref‖ at or below which the model computes the reference (float32 rounding of a deep network is ~1e-6).</summary>
    public const double DefaultTolerance = 1e-4;

    public const string InputIds = "input_ids", PixelValues = "pixel_values", Logits = "logits";

    public static ReferenceComparison Compare(PretrainedModel model, string referencePath, double tolerance = DefaultTolerance)
    {
        var file = SafetensorsFile.Open(referencePath);
        bool hasIds = file.Entries.ContainsKey(InputIds), hasPixels = file.Entries.ContainsKey(PixelValues);
        if (hasIds == hasPixels)
            throw BadInputException.For(referencePath, hasIds
                ? $"holds both '{InputIds}' and '{PixelValues}'; a reference has one input"
                : $"holds no '{InputIds}' (language models) or '{PixelValues}' (image classifiers) tensor");
        if (!file.Entries.TryGetValue(Logits, out var logitsEntry))
            throw BadInputException.For(referencePath, $"holds no '{Logits}' tensor");
        if (!SafetensorsFile.IsFloat(logitsEntry.DType))
            throw BadInputException.For(referencePath, $"'{Logits}' has dtype {logitsEntry.DType}, expected F32");
        string input = hasIds ? InputIds : PixelValues;
        var inputEntry = file.Entries[input];
        var expectedLogits = hasIds ? CheckTokens(model, referencePath, inputEntry) : CheckPixels(model, referencePath, inputEntry);
        if (!logitsEntry.Shape.SequenceEqual(expectedLogits))
            throw BadInputException.For(referencePath,
                $"'{Logits}' has shape {SafetensorsFile.FormatShape(logitsEntry.Shape)}; for {input} {SafetensorsFile.FormatShape(inputEntry.Shape)} this model gives {SafetensorsFile.FormatShape(expectedLogits)}");

        // One example at a time: the squared norms and the largest difference accumulate in float64.
        double diff2 = 0, ref2 = 0, maxAbs = 0;
        long batch = inputEntry.Shape[0];
        using (torch.no_grad())
        {
            using var inputs = file.Read(input, hasIds ? null : model.DType);
            if (hasIds) CheckTokenRange(model, referencePath, inputs);
            using var reference = file.Read(Logits, ScalarType.Float64);
            if (!FiniteAll(reference)) throw BadInputException.For(referencePath, $"'{Logits}' contains NaN or infinite values");
            for (long b = 0; b < batch; b++)
            {
                using var scope = torch.NewDisposeScope();
                var x = inputs.narrow(0, b, 1);
                if (hasIds && x.dtype != ScalarType.Int64) x = x.to_type(ScalarType.Int64);
                var ours = model.call(x).to_type(ScalarType.Float64);
                var d = ours.sub(reference.narrow(0, b, 1));
                if (!FiniteAll(d)) throw new NumericalException($"the model's logits are not finite for example {b} of {referencePath}");
                diff2 += d.PowScalar(2).sum().item<double>();
                ref2 += reference.narrow(0, b, 1).PowScalar(2).sum().item<double>();
                maxAbs = Math.Max(maxAbs, d.abs().max().item<double>());
            }
        }
        double refNorm = Math.Sqrt(ref2);
        double rel = refNorm > 0 ? Math.Sqrt(diff2) / refNorm : Math.Sqrt(diff2) == 0 ? 0 : double.PositiveInfinity;
        return new ReferenceComparison(input, inputEntry.Shape, logitsEntry.Shape, rel, maxAbs, refNorm, tolerance);
    }

    private static bool FiniteAll(Tensor t)
    {
        using var f = torch.isfinite(t);
        using var all = f.all();
        return all.item<bool>();
    }

    private static long[] CheckTokens(PretrainedModel model, string path, SafetensorsEntry ids)
    {
        if (model.Config is not ICausalLanguageModelConfig lm)
            throw BadInputException.For(path, $"holds '{InputIds}' (a language-model reference), but the model is a {model.Config.ModelType} image classifier");
        if (ids.DType is not ("I64" or "I32"))
            throw BadInputException.For(path, $"'{InputIds}' has dtype {ids.DType}, expected I64");
        if (ids.Shape.Length != 2 || ids.Shape[0] < 1 || ids.Shape[1] < 1)
            throw BadInputException.For(path, $"'{InputIds}' has shape {SafetensorsFile.FormatShape(ids.Shape)}, expected [batch, seq]");
        if (ids.Shape[1] > lm.MaxPositions)
            throw BadInputException.For(path, $"'{InputIds}' has {ids.Shape[1]} positions, the model has {lm.MaxPositions}");
        return [ids.Shape[0], ids.Shape[1], lm.VocabSize];
    }

    private static void CheckTokenRange(PretrainedModel model, string path, Tensor ids)
    {
        int vocab = ((ICausalLanguageModelConfig)model.Config).VocabSize;
        long min = ids.min().item<long>(), max = ids.max().item<long>();
        if (min < 0 || max >= vocab)
            throw BadInputException.For(path, $"'{InputIds}' holds token id {(min < 0 ? min : max)}, outside the model's vocabulary of {vocab}");
    }

    private static long[] CheckPixels(PretrainedModel model, string path, SafetensorsEntry pixels)
    {
        if (model.Config is not IImageClassifierConfig img)
            throw BadInputException.For(path, $"holds '{PixelValues}' (an image-classifier reference), but the model is a {model.Config.ModelType} language model");
        if (!SafetensorsFile.IsFloat(pixels.DType))
            throw BadInputException.For(path, $"'{PixelValues}' has dtype {pixels.DType}, expected F32");
        long[] want = [pixels.Shape.Length > 0 ? pixels.Shape[0] : 0, img.NumChannels, img.ImageSize, img.ImageSize];
        if (pixels.Shape.Length != 4 || pixels.Shape[0] < 1 || !pixels.Shape.Skip(1).SequenceEqual(want.Skip(1)))
            throw BadInputException.For(path, $"'{PixelValues}' has shape {SafetensorsFile.FormatShape(pixels.Shape)}, the model takes [batch, {img.NumChannels}, {img.ImageSize}, {img.ImageSize}]");
        return [pixels.Shape[0], img.NumLabels];
    }
}
