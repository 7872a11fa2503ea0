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

/// <summary>
/// A sentence encoder against a reference encoder (the dense model it was compressed from) on the same sentences: cosine of
/// each sentence's two embeddings (mean, minimum), and retrieval agreement: for each sentence, the share of its 10 nearest
/// neighbours (cosine, itself left out) under the reference that are among its 10 nearest under the model, averaged.
/// </summary>
public sealed record EmbeddingScore(double MeanCosine, double MinCosine, double Knn10Agreement, int Sentences, long Parameters, double Seconds, double SentencesPerSecond);

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

    /// <summary>
    /// The same protocol on a model streamed layer by layer (<see cref="LayerStream"/>): the windows go through in chunks
    /// whose boundary hidden states stay under <paramref name="hiddenBudgetBytes"/>, each chunk through every layer, the head
    /// applied batch by batch at the end. Batches of <paramref name="perPass"/> windows, as the in-memory path makes them.
    /// </summary>
    public static LanguageModelScore Perplexity(LayerStream stream, TokenWindows data, int? perPass = null, IProgress<ProgressTick>? progress = null,
        IReadOnlyList<int>? windows = null, long hiddenBudgetBytes = 256L << 20)
    {
        var config = stream.Shell.Config;
        CheckFits(config, data);
        windows ??= Enumerable.Range(0, data.Count).ToArray();
        int batch = perPass ?? stream.Shell.DefaultBatchSize(data.WindowLength);
        long perWindow = (long)data.WindowLength * config.HiddenSize * stream.Shell.DType.ElementSize();
        int chunk = (int)Math.Max(batch, hiddenBudgetBytes / perWindow / batch * batch);
        var sw = Stopwatch.StartNew();
        double nllSum = 0;
        long predicted = 0;
        progress?.Report(new ProgressTick("eval", 0, windows.Count, "windows"));
        for (int start = 0; start < windows.Count; start += chunk)
        {
            var ids = windows.Skip(start).Take(chunk).Chunk(batch).Select(data.Batch).ToList();
            var (hidden, contexts) = stream.Run(ids);
            using (torch.no_grad())
                for (int b = 0; b < ids.Count; b++)
                {
                    using var scope = torch.NewDisposeScope();
                    nllSum += SummedNextTokenNll(stream.Parts.Head(hidden[b]), ids[b]).to_type(ScalarType.Float64).item<double>();
                    predicted += ids[b].shape[0] * (long)(data.WindowLength - 1);
                }
            foreach (var t in hidden.Concat(ids)) t.Dispose();
            foreach (var c in contexts) c.Dispose();
            progress?.Report(new ProgressTick("eval", Math.Min(start + chunk, windows.Count), windows.Count, "windows"));
        }
        double seconds = sw.Elapsed.TotalSeconds;
        double mean = nllSum / predicted;
        if (!double.IsFinite(mean)) throw new NumericalException($"evaluation produced a non-finite loss ({mean})");
        return new LanguageModelScore(mean, Math.Exp(mean), predicted, windows.Count, stream.ParameterCount,
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

    /// <summary>The sentence embeddings [N, d] (float64, on the CPU) of <paramref name="data"/>, <paramref name="perPass"/> sentences per forward pass.</summary>
    public static Tensor Embeddings(PretrainedModel model, SentenceSet data, int perPass = 32, IProgress<ProgressTick>? progress = null)
    {
        if (model.Task != ModelTask.SentenceEncoder)
            throw new UsageException("model", $"a {model.Config.ModelType} model is not a sentence encoder (evaluate it by perplexity or accuracy)");
        var rows = new List<Tensor>();
        progress?.Report(new ProgressTick("embed", 0, data.Count, "sentences"));
        // Batches of similar length (little padding); the rows are put back in file order.
        var order = Enumerable.Range(0, data.Count).OrderBy(i => data.Ids[i].Length).ThenBy(i => i).ToArray();
        int done = 0;
        using (torch.no_grad())
            foreach (var idx in order.Chunk(perPass))
            {
                using var scope = torch.NewDisposeScope();
                rows.Add(model.call(data.Batch(idx)).to_type(ScalarType.Float64).MoveToOuterDisposeScope());
                done += idx.Length;
                progress?.Report(new ProgressTick("embed", done, data.Count, "sentences"));
            }
        using var sorted = torch.cat(rows, 0);
        foreach (var r in rows) r.Dispose();
        var inverse = new long[order.Length];
        for (int k = 0; k < order.Length; k++) inverse[order[k]] = k;
        using var back = torch.tensor(inverse, dtype: ScalarType.Int64);
        return sorted.index_select(0, back);
    }

    public const int Neighbours = 10;

    /// <summary><paramref name="model"/> against <paramref name="reference"/> on the same sentences (see <see cref="EmbeddingScore"/>).</summary>
    public static EmbeddingScore CompareEmbeddings(PretrainedModel model, PretrainedModel reference, SentenceSet data, int perPass = 32,
        IProgress<ProgressTick>? progress = null)
    {
        using var scope = torch.NewDisposeScope();
        if (data.Count <= Neighbours) throw BadInputException.For(data.Source, $"holds {data.Count} sentences; retrieval agreement needs more than {Neighbours}");
        return CompareEmbeddings(model, Embeddings(reference, data, perPass, progress), data, perPass, progress);
    }

    /// <summary>The same against reference embeddings [N, d] already computed (the dense model's, before it was compressed in place).</summary>
    public static EmbeddingScore CompareEmbeddings(PretrainedModel model, Tensor r, SentenceSet data, int perPass = 32, IProgress<ProgressTick>? progress = null)
    {
        if (data.Count <= Neighbours) throw BadInputException.For(data.Source, $"holds {data.Count} sentences; retrieval agreement needs more than {Neighbours}");
        if (r.shape[0] != data.Count) throw new ArgumentException($"{r.shape[0]} reference embeddings for {data.Count} sentences");
        using var scope = torch.NewDisposeScope();
        var sw = Stopwatch.StartNew();
        var e = Embeddings(model, data, perPass, progress);
        double seconds = sw.Elapsed.TotalSeconds;
        var cos = torch.nn.functional.cosine_similarity(e, r, 1);
        double mean = cos.mean().item<double>(), min = cos.min().item<double>();
        double agreement = Knn(e).unsqueeze(1).eq(Knn(r).unsqueeze(2)).any(2).to_type(ScalarType.Float64).mean().item<double>();
        if (!double.IsFinite(mean) || !double.IsFinite(agreement)) throw new NumericalException($"embedding evaluation produced a non-finite result ({mean}, {agreement})");
        return new EmbeddingScore(mean, min, agreement, data.Count, model.ParameterCount(), seconds, data.Count / seconds);
    }

    /// <summary>[N, 10] indices of each row's nearest rows by cosine, itself excluded (ties: the lower index first).</summary>
    private static Tensor Knn(Tensor embeddings)
    {
        var unit = torch.nn.functional.normalize(embeddings, p: 2.0, dim: 1);
        var sim = unit.matmul(unit.t());
        using var self = torch.eye(sim.shape[0], dtype: ScalarType.Bool);
        sim = sim.MaskedFillScalar(self, double.NegativeInfinity);
        return sim.topk(Neighbours, 1, largest: true, sorted: true).indexes;
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
