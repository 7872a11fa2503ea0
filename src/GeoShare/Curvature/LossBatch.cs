using GeoShare.Data;
using GeoShare.Models;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Curvature;

/// <summary>
/// A fixed calibration batch and the loss whose curvature is taken: the mean over its predictions.
/// It also supplies factors of the loss's curvature in output space, from which K-FAC's G is built.
/// </summary>
public abstract class LossBatch : IDisposable
{
    /// <summary>Number of predictions the loss averages over.</summary>
    public abstract long Predictions { get; }

    /// <summary>A short description (e.g. "4 windows of valid.txt: 0, 1, 2, 3").</summary>
    public abstract string Description { get; }

    /// <summary>Runs the model on the batch; the output the loss is computed from.</summary>
    public abstract Tensor Output(Module<Tensor, Tensor> model);

    /// <summary>Mean loss over the predictions, from <see cref="Output"/>'s result.</summary>
    public abstract Tensor Loss(Tensor output);

    /// <summary>
    /// Tensors F shaped like the output with E[Σ_s F_s F_sᵀ] = the per-prediction Hessian of the loss in output
    /// space (exact factors where cheap, Monte-Carlo samples otherwise). Back-propagated to a layer's output,
    /// they give the vectors g whose second moment is K-FAC's G. <paramref name="samples"/> = 0 asks for the
    /// exact factorisation (one factor per output class), which costs one backward pass per class.
    /// </summary>
    public abstract IEnumerable<Tensor> OutputCurvatureFactors(Tensor output, Generator generator, int samples);

    public Tensor Loss(Module<Tensor, Tensor> model) => Loss(Output(model));

    public virtual void Dispose() => GC.SuppressFinalize(this);
}

/// <summary>Next-token cross-entropy of a causal language model on token windows.</summary>
public sealed class LanguageModelBatch(Tensor ids, string description) : LossBatch
{
    public Tensor Ids { get; } = ids;
    public override long Predictions => Ids.shape[0] * (Ids.shape[1] - 1);
    public override string Description { get; } = description;

    public static LanguageModelBatch FromWindows(TokenWindows data, IReadOnlyList<int> windows) =>
        new(data.Batch(windows), $"{windows.Count} windows of {Path.GetFileName(data.Source)}: {string.Join(", ", windows.Take(8))}{(windows.Count > 8 ? ", …" : "")}");

    public override Tensor Output(Module<Tensor, Tensor> model) => model.call(Ids);

    /// <summary>
    /// Mean next-token cross-entropy, written as logsumexp − target logit over all positions with the last
    /// position of each window masked out: the same number as cross_entropy on the shifted logits, without
    /// copying a slice of the [B, T, V] logits, and 4% cheaper per Hessian-vector product on GPT-2.
    /// </summary>
    public override Tensor Loss(Tensor logits)
    {
        var flat = logits.reshape(-1, logits.shape[2]);
        var perToken = torch.logsumexp(flat, 1).sub(flat.gather(1, Targets.unsqueeze(1)).squeeze(1));
        return perToken.mul(Mask).sum().DivScalar(Predictions);
    }

    private Tensor Targets => (_targets ??= ShiftedTargets(Ids)).Targets;
    private Tensor Mask => (_targets ??= ShiftedTargets(Ids)).Mask;
    private (Tensor Targets, Tensor Mask)? _targets;

    /// <summary>Next token of every position (0 at the last, where the mask is 0); kept across dispose scopes, freed with the batch.</summary>
    private static (Tensor, Tensor) ShiftedTargets(Tensor ids)
    {
        using var scope = torch.NewDisposeScope();
        long b = ids.shape[0];
        var targets = torch.cat([ids[TensorIndex.Colon, TensorIndex.Slice(1)], torch.zeros(b, 1, dtype: ScalarType.Int64)], 1).reshape(-1);
        var mask = torch.cat([torch.ones(b, ids.shape[1] - 1), torch.zeros(b, 1)], 1).reshape(-1);
        return (targets.DetachFromDisposeScope(), mask.DetachFromDisposeScope());
    }

    /// <summary>Cross-entropy's output Hessian, factored over the prediction positions (the last position predicts nothing).</summary>
    public override IEnumerable<Tensor> OutputCurvatureFactors(Tensor logits, Generator generator, int samples)
    {
        long b = logits.shape[0], t = logits.shape[1], v = logits.shape[2];
        var pred = logits.detach()[TensorIndex.Colon, TensorIndex.Slice(0, -1)].reshape(-1, v);
        foreach (var f in CrossEntropyCurvature.Factors(pred, generator, samples))
            yield return PadToWindows(f, b, t, v);
    }

    private static Tensor PadToWindows(Tensor f, long b, long t, long v)
    {
        using var scope = torch.NewDisposeScope();
        var full = torch.zeros(b, t, v, dtype: f.dtype);
        full[TensorIndex.Colon, TensorIndex.Slice(0, -1)] = f.reshape(b, t - 1, v);
        f.Dispose();
        return full.MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        _targets?.Targets.Dispose();
        _targets?.Mask.Dispose();
        Ids.Dispose();
        base.Dispose();
    }
}

/// <summary>Classification cross-entropy of an image classifier on a fixed set of images.</summary>
public sealed class ClassificationBatch(Tensor inputs, Tensor labels, string description) : LossBatch
{
    public Tensor Inputs { get; } = inputs;
    public Tensor Labels { get; } = labels;
    public override long Predictions => Labels.shape[0];
    public override string Description { get; } = description;

    public static ClassificationBatch FromImages(ImageDataset data, ImagePreprocessor pre, IReadOnlyList<int> indices, ScalarType dtype)
    {
        var (pixels, labels) = data.Batch(indices, pre, dtype);
        return new ClassificationBatch(pixels, labels, $"{indices.Count} images of {Path.GetFileName(data.Source)}: {string.Join(", ", indices.Take(8))}{(indices.Count > 8 ? ", …" : "")}");
    }

    public override Tensor Output(Module<Tensor, Tensor> model) => model.call(Inputs);
    public override Tensor Loss(Tensor logits) => functional.cross_entropy(logits, Labels);

    public override IEnumerable<Tensor> OutputCurvatureFactors(Tensor logits, Generator generator, int samples) =>
        CrossEntropyCurvature.Factors(logits.detach(), generator, samples);

    public override void Dispose()
    {
        Inputs.Dispose();
        Labels.Dispose();
        base.Dispose();
    }
}

/// <summary>Factors of cross-entropy's output Hessian diag(p) − ppᵀ for logits [N, C].</summary>
public static class CrossEntropyCurvature
{
    /// <summary>
    /// samples &gt; 0: (p − e_y)/√samples with y ~ p, whose outer products sum in expectation to diag(p) − ppᵀ (the Fisher);
    /// samples = 0: the exact factors √p_c (e_c − p), c = 1..C.
    /// </summary>
    public static IEnumerable<Tensor> Factors(Tensor logits, Generator generator, int samples)
    {
        // No yield inside a dispose scope: the caller's tensors would land in it while the iterator is suspended.
        long c = logits.shape[1];
        if (samples == 0)
            for (long k = 0; k < c; k++) yield return ExactFactor(logits, k);
        else
            for (int s = 0; s < samples; s++) yield return SampledFactor(logits, generator, samples);
    }

    private static Tensor ExactFactor(Tensor logits, long k)
    {
        using var scope = torch.NewDisposeScope();
        var probs = functional.softmax(logits, -1);
        var f = probs.neg();
        f[TensorIndex.Colon, k] = f[TensorIndex.Colon, k].AddScalar(1.0);
        return f.mul(probs[TensorIndex.Colon, TensorIndex.Slice(k, k + 1)].sqrt()).MoveToOuterDisposeScope();
    }

    /// <summary>One Monte-Carlo factor, scaled by 1/√samples so that the factors' outer products sum to the mean.</summary>
    private static Tensor SampledFactor(Tensor logits, Generator generator, int samples)
    {
        using var scope = torch.NewDisposeScope();
        var probs = functional.softmax(logits, -1);
        var sampled = torch.multinomial(probs, 1, generator: generator).reshape(-1);
        return probs.sub(functional.one_hot(sampled, logits.shape[1]).to_type(probs.dtype)).MulScalar(1.0 / Math.Sqrt(samples)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The loss of a model without a task loss (a sentence encoder): embedding distillation against the dense model,
/// L(θ) = mean over the sentences of ‖e_θ(x) − e_dense(x)‖², with e_dense computed once from the dense model. At the dense
/// weights L = 0 and its gradient is zero (every residual is zero), so its Hessian there is exactly the Gauss–Newton
/// matrix (2/N) Σ Jᵀ J: the second-order change of the embeddings under a perturbation of the weights.
/// </summary>
public sealed class EmbeddingDistillationBatch : LossBatch
{
    public Tensor Ids { get; }
    public Tensor Targets { get; }
    public override long Predictions => Ids.shape[0];
    public override string Description { get; }

    private EmbeddingDistillationBatch(Tensor ids, Tensor targets, string description)
    {
        Ids = ids;
        Targets = targets;
        Description = description;
    }

    /// <summary>The sentences <paramref name="indices"/> of <paramref name="data"/>, their targets the embeddings <paramref name="dense"/> computes now.</summary>
    public static EmbeddingDistillationBatch FromSentences(Module<Tensor, Tensor> dense, SentenceSet data, IReadOnlyList<int> indices)
    {
        var ids = data.Batch(indices);
        Tensor targets;
        using (torch.no_grad()) targets = dense.call(ids).detach();
        return new EmbeddingDistillationBatch(ids, targets,
            $"{indices.Count} sentences of {Path.GetFileName(data.Source)}: {string.Join(", ", indices.Take(8))}{(indices.Count > 8 ? ", …" : "")}");
    }

    /// <summary>Padded ids [N, T] (tests); the targets are <paramref name="dense"/>'s embeddings of them.</summary>
    internal static EmbeddingDistillationBatch FromIds(Module<Tensor, Tensor> dense, Tensor ids, string description)
    {
        Tensor targets;
        using (torch.no_grad()) targets = dense.call(ids).detach();
        return new EmbeddingDistillationBatch(ids, targets, description);
    }

    public override Tensor Output(Module<Tensor, Tensor> model) => model.call(Ids);

    public override Tensor Loss(Tensor e) => e.sub(Targets).PowScalar(2).sum().DivScalar(Predictions);

    /// <summary>
    /// The loss's output Hessian per sentence is 2I. samples = 0: the exact factors √2·e_c, one per embedding dimension;
    /// samples &gt; 0: √2·z/√samples with z ~ N(0, I), whose outer products sum to 2I in expectation.
    /// </summary>
    public override IEnumerable<Tensor> OutputCurvatureFactors(Tensor e, Generator generator, int samples)
    {
        if (samples == 0)
            for (long c = 0; c < e.shape[^1]; c++) yield return UnitFactor(e, c);
        else
            for (int s = 0; s < samples; s++) yield return GaussianFactor(e, generator, samples);
    }

    private static Tensor UnitFactor(Tensor e, long c)
    {
        var f = torch.zeros_like(e);
        f[TensorIndex.Ellipsis, c] = Math.Sqrt(2);
        return f;
    }

    private static Tensor GaussianFactor(Tensor e, Generator generator, int samples)
    {
        using var scope = torch.NewDisposeScope();
        return torch.randn(e.shape, dtype: e.dtype, generator: generator).MulScalar(Math.Sqrt(2.0 / samples)).MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        Ids.Dispose();
        Targets.Dispose();
        base.Dispose();
    }
}

/// <summary>Mean squared error ½‖y − t‖² averaged over rows; its output Hessian is I, factored exactly by unit vectors.</summary>
public sealed class RegressionBatch(Tensor inputs, Tensor targets) : LossBatch
{
    public Tensor Inputs { get; } = inputs;
    public Tensor Targets { get; } = targets;
    public override long Predictions => Targets.shape[0];
    public override string Description => $"{Predictions} regression rows";

    public override Tensor Output(Module<Tensor, Tensor> model) => model.call(Inputs);
    public override Tensor Loss(Tensor y) => y.sub(Targets).PowScalar(2).sum().MulScalar(0.5 / Predictions);

    public override IEnumerable<Tensor> OutputCurvatureFactors(Tensor y, Generator generator, int samples)
    {
        for (long c = 0; c < y.shape[^1]; c++) yield return UnitFactor(y, c);
    }

    private static Tensor UnitFactor(Tensor y, long c)
    {
        var f = torch.zeros_like(y);
        f[TensorIndex.Ellipsis, c] = 1.0;
        return f;
    }
}
