using System.Diagnostics;
using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Evaluation;

/// <summary>Language-model quality on a token-window set: mean next-token NLL (nats) and perplexity.</summary>
public sealed record LanguageModelScore(
    double MeanNll, double Perplexity, long PredictedTokens, int Windows, long Parameters, double Seconds, double TokensPerSecond);

/// <summary>Classification quality on an image set.</summary>
public sealed record ClassificationScore(
    double Accuracy, int Correct, int Images, double MeanNll, long Parameters, double Seconds, double ImagesPerSecond);

/// <summary>The evaluation protocol of the reference numbers (see assets/README.md).</summary>
public static class Evaluator
{
    public static LanguageModelScore Perplexity(PretrainedModel model, TokenWindows data, int? batchSize = null,
        IProgress<ProgressTick>? progress = null, IReadOnlyList<int>? windows = null)
    {
        if (model.Task != ModelTask.CausalLanguageModel)
            throw new UsageException("model", $"a {model.Config.ModelType} image classifier; perplexity evaluates language models (evaluate it by accuracy)");
        return Perplexity(ids => model.call(ids), model.Config, model.ParameterCount(), data, batchSize ?? model.DefaultBatchSize(data.WindowLength), progress, windows);
    }

    /// <summary>
    /// The protocol over any forward pass: <paramref name="logits"/> maps int64 ids [B, T] to float logits [B, T, vocab]
    /// (GeoShare's model, or another runtime's session on an exported file).
    /// </summary>
    public static LanguageModelScore Perplexity(Func<Tensor, Tensor> logits, ModelConfig config, long parameters, TokenWindows data, int perPass,
        IProgress<ProgressTick>? progress = null, IReadOnlyList<int>? windows = null)
    {
        CheckFits(config, data);
        windows ??= Enumerable.Range(0, data.Count).ToArray();
        var sw = Stopwatch.StartNew();
        double nllSum = 0;
        long predicted = 0;
        progress?.Report(new ProgressTick("eval", 0, windows.Count, "windows"));
        using (torch.no_grad())
        {
            for (int start = 0; start < windows.Count; start += perPass)
            {
                using var scope = torch.NewDisposeScope();
                var batch = windows.Skip(start).Take(perPass).ToArray();
                var ids = data.Batch(batch);
                nllSum += SummedNextTokenNll(logits(ids), ids).to_type(ScalarType.Float64).item<double>();
                predicted += batch.Length * (long)(data.WindowLength - 1);
                progress?.Report(new ProgressTick("eval", start + batch.Length, windows.Count, "windows"));
            }
        }
        double seconds = sw.Elapsed.TotalSeconds;
        double mean = nllSum / predicted;
        if (!double.IsFinite(mean)) throw new NumericalException($"evaluation produced a non-finite loss ({mean})");
        return new LanguageModelScore(mean, Math.Exp(mean), predicted, windows.Count, parameters,
            seconds, windows.Count * (double)data.WindowLength / seconds);
    }

    /// <summary>Sum over the batch of next-token cross-entropy: logits at t predict the token at t + 1.</summary>
    public static Tensor SummedNextTokenNll(PretrainedModel model, Tensor ids) => SummedNextTokenNll(model.call(ids), ids);

    /// <summary>
    /// The same from logits [B, T, vocab] already computed for <paramref name="ids"/>. Logits of a 16-bit model
    /// (--dtype bfloat16) are widened to float32 first, so the log-softmax and the sum over tokens are not rounded to 8 bits.
    /// </summary>
    public static Tensor SummedNextTokenNll(Tensor modelLogits, Tensor ids)
    {
        var logits = Widened(modelLogits);
        long v = logits.shape[2];
        var pred = logits[TensorIndex.Colon, TensorIndex.Slice(0, -1)].reshape(-1, v);
        var target = ids[TensorIndex.Colon, TensorIndex.Slice(1)].reshape(-1);
        return torch.nn.functional.cross_entropy(pred, target, reduction: nn.Reduction.Sum);
    }

    /// <summary>16-bit logits as float32 (the loss of a bfloat16 model is computed in float32); others unchanged.</summary>
    public static Tensor Widened(Tensor logits) =>
        logits.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? logits.to_type(ScalarType.Float32) : logits;

    /// <summary>Checks the windows against the model before any native call sees them.</summary>
    public static void CheckFits(PretrainedModel model, TokenWindows data) => CheckFits(model.Config, data);

    public static void CheckFits(ModelConfig config, TokenWindows data)
    {
        if (config is not ICausalLanguageModelConfig lm) throw new UsageException($"{config.ModelType} is not a language model");
        int vocab = lm.VocabSize, maxPositions = lm.MaxPositions;
        if (data.WindowLength > maxPositions)
            throw new UsageException($"window length {data.WindowLength} exceeds the model's {maxPositions} positions");
        for (int w = 0; w < data.Count; w++)
            foreach (int id in data.Window(w))
                if (id < 0 || id >= vocab)
                    throw data.Tokenizer is { } tok
                        ? BadInputException.For(tok, $"maps text of {data.Source} to token id {id}, outside the model's vocabulary of {vocab} (config.json vocab_size): the tokenizer does not fit the model")
                        : BadInputException.For(data.Source, $"token id {id} is outside the model's vocabulary of {vocab}");
    }

    public static ClassificationScore Accuracy(PretrainedModel model, ImageDataset data, ImagePreprocessor pre, int batchSize = 500,
        IProgress<ProgressTick>? progress = null, IReadOnlyList<int>? indices = null) =>
        Accuracy(pixels => model.call(pixels), model.Config, model.ParameterCount(), model.DType, data, pre, batchSize, progress, indices);

    /// <summary>The protocol over any forward pass: <paramref name="logits"/> maps pixels [B, C, H, W] to logits [B, labels].</summary>
    public static ClassificationScore Accuracy(Func<Tensor, Tensor> logits, ModelConfig config, long parameters, ScalarType dtype, ImageDataset data,
        ImagePreprocessor pre, int batchSize = 500, IProgress<ProgressTick>? progress = null, IReadOnlyList<int>? indices = null)
    {
        if (config is not IImageClassifierConfig cfg)
            throw new UsageException("model", $"a {config.ModelType} language model; accuracy evaluates image classifiers (evaluate it by perplexity)");
        if (data.Height != cfg.ImageSize || data.Width != cfg.ImageSize || cfg.NumChannels != 1)
            throw BadInputException.For(data.Source, $"images are {data.Height}×{data.Width}×1, the model expects {cfg.ImageSize}×{cfg.ImageSize}×{cfg.NumChannels}");
        indices ??= Enumerable.Range(0, data.Count).ToArray();
        var sw = Stopwatch.StartNew();
        int correct = 0;
        double nll = 0;
        progress?.Report(new ProgressTick("eval", 0, indices.Count, "images"));
        using (torch.no_grad())
        {
            for (int start = 0; start < indices.Count; start += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var batch = indices.Skip(start).Take(batchSize).ToArray();
                var (pixels, labels) = data.Batch(batch, pre, dtype);
                var output = Widened(logits(pixels));
                correct += (int)output.argmax(1).eq(labels).sum().item<long>();
                nll += torch.nn.functional.cross_entropy(output, labels, reduction: nn.Reduction.Sum).to_type(ScalarType.Float64).item<double>();
                progress?.Report(new ProgressTick("eval", start + batch.Length, indices.Count, "images"));
            }
        }
        double seconds = sw.Elapsed.TotalSeconds;
        return new ClassificationScore((double)correct / indices.Count, correct, indices.Count, nll / indices.Count,
            parameters, seconds, indices.Count / seconds);
    }
}
