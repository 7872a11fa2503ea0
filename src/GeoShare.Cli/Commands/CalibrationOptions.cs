using GeoShare.Curvature;
using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;

namespace GeoShare.Cli.Commands;

/// <summary>Calibration batches from the command line: windows of a text file, or Fashion-MNIST training images.</summary>
public static class CalibrationOptions
{
    public static OptionSpec Data => new("--data", "FILE", "text file whose windows form the calibration batch (language models), or one sentence per line (sentence encoders)");
    public static OptionSpec FashionMnist => new("--fashion-mnist", "DIR", "Fashion-MNIST folder; the batch is taken from its training images (ViT)");

    public static LossBatch Load(PretrainedModel model, string modelDir, ParsedArgs a, string countOption, string strideOption, string? firstOption = null,
        int? defaultCount = null, int? defaultStride = null)
    {
        string? data = a.String("--data"), fmnist = a.String("--fashion-mnist");
        int count = defaultCount is int dc && !a.Has(countOption) ? dc : a.Int(countOption);
        if (count <= 0) throw new UsageException($"{countOption}: must be at least 1, got {count}");
        int stride = defaultStride is int ds && !a.Has(strideOption) ? ds : a.Int(strideOption, min: 1);
        int first = firstOption is null ? 0 : a.Int(firstOption, min: 0);
        if (model.Task == ModelTask.CausalLanguageModel)
        {
            if (data is null) throw new UsageException($"{modelDir} is a language model: give --data FILE");
            var tokenizer = ByteLevelBpeTokenizer.Load(modelDir);
            ConsoleProgress.Status($"tokenizing {data}");
            var windows = TokenWindows.FromFile(data, tokenizer, 256);
            Evaluation.Evaluator.CheckFits(model, windows);
            return LanguageModelBatch.FromWindows(windows, windows.Select(count, stride, first));
        }
        if (model.Task == ModelTask.SentenceEncoder)
        {
            if (data is null) throw new UsageException($"{modelDir} is a sentence encoder: give --data FILE (one sentence per line)");
            var sentences = Sentences(model, modelDir, data);
            ConsoleProgress.Status("embedding the curvature batch with the dense model (the distillation targets)");
            return EmbeddingDistillationBatch.FromSentences(model, sentences, sentences.Select(count, stride, first));
        }
        if (fmnist is null) throw new UsageException($"{modelDir} is an image classifier: give --fashion-mnist DIR");
        var images = ImageDataset.LoadFashionMnist(fmnist, "train");
        return ClassificationBatch.FromImages(images, ImagePreprocessor.Load(modelDir), images.Select(count, stride, first), model.DType);
    }

    /// <summary>The calibration set of --calib-windows / --calib-stride (windows of --data, or Fashion-MNIST training images).</summary>
    public static GeoShare.Sharing.CalibrationSet CalibrationSet(PretrainedModel model, string modelDir, ParsedArgs a)
    {
        int count = a.Int("--calib-windows", min: 1), stride = a.Int("--calib-stride", min: 1);
        if (model.Task == ModelTask.CausalLanguageModel)
        {
            string data = a.String("--data") ?? throw new UsageException($"{modelDir} is a language model: give --data FILE for calibration");
            ConsoleProgress.Status($"tokenizing {data}");
            var windows = TokenWindows.FromFile(data, ByteLevelBpeTokenizer.Load(modelDir), 256);
            Evaluation.Evaluator.CheckFits(model, windows);
            return GeoShare.Sharing.CalibrationSet.FromWindows(windows, windows.Select(count, stride));
        }
        if (model.Task == ModelTask.SentenceEncoder)
        {
            string data = a.String("--data") ?? throw new UsageException($"{modelDir} is a sentence encoder: give --data FILE (one sentence per line) for calibration");
            var sentences = Sentences(model, modelDir, data);
            return GeoShare.Sharing.CalibrationSet.FromSentences(sentences, sentences.Select(count, stride));
        }
        string dir = a.String("--fashion-mnist") ?? throw new UsageException($"{modelDir} is an image classifier: give --fashion-mnist DIR for calibration");
        var train = ImageDataset.LoadFashionMnist(dir, "train");
        return GeoShare.Sharing.CalibrationSet.FromImages(train, ImagePreprocessor.Load(modelDir), train.Select(count, stride));
    }

    /// <summary>The sentences of <paramref name="path"/> (one per line), tokenized with the encoder's WordPiece vocabulary.</summary>
    public static SentenceSet Sentences(PretrainedModel model, string modelDir, string path, int? limit = null)
    {
        var config = (ISentenceEncoderConfig)model.Config;
        var tokenizer = WordPieceTokenizer.Load(modelDir, config.MaxPositions);
        ConsoleProgress.Status($"tokenizing {path}");
        return SentenceSet.FromFile(path, tokenizer, config, limit);
    }

    /// <summary>--dtype: the element type the model computes in (bfloat16 only where the command offers it: eval, compress).</summary>
    public static torch.ScalarType DType(ParsedArgs a, bool allowBFloat16 = false) =>
        (allowBFloat16 ? a.Choice("--dtype", "float32", "float64", "bfloat16") : a.Choice("--dtype", "float32", "float64")) switch
        {
            "float64" => torch.ScalarType.Float64,
            "bfloat16" => torch.ScalarType.BFloat16,
            _ => torch.ScalarType.Float32,
        };

    /// <summary>--save-dtype: the element type a compressed checkpoint is written in; null keeps the source checkpoint's.</summary>
    public static torch.ScalarType? SaveDType(ParsedArgs a) => a.Has("--save-dtype")
        ? a.Choice("--save-dtype", "float32", "float16", "bfloat16") switch
        {
            "float16" => torch.ScalarType.Float16,
            "bfloat16" => torch.ScalarType.BFloat16,
            _ => torch.ScalarType.Float32,
        }
        : null;

    /// <summary>A dtype as the JSON outputs and messages name it (float32, bfloat16, float16, …).</summary>
    public static string Name(torch.ScalarType dtype) => dtype.ToString().ToLowerInvariant();
}
