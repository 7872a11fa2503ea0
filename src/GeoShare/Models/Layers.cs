using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace GeoShare.Models;

/// <summary>How a checkpoint stores a projection matrix: nn.Linear keeps [out, in], GPT-2's Conv1D keeps [in, out].</summary>
public enum WeightLayout { OutIn, InOut }

/// <summary>Observes a projection's input and output during forward (activation statistics, K-FAC).</summary>
public interface IProjectionProbe
{
    void OnForward(LinearMap projection, Tensor input, Tensor output);
}

/// <summary>
/// A linear projection y = x W + b, whatever its storage: dense, a shared low-rank basis with per-layer
/// coefficients, or a matrix tied across layers. The shareable matrices of every architecture are these.
/// </summary>
public abstract class LinearMap : Module<Tensor, Tensor>
{
    public int InFeatures { get; }
    public int OutFeatures { get; }
    public IProjectionProbe? Probe { get; set; }

    protected LinearMap(string name, int inFeatures, int outFeatures) : base(name)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
    }

    /// <summary>The bias, or null.</summary>
    public abstract Parameter? Bias { get; }

    /// <summary>How this projection's matrix is stored: a dense one in its checkpoint's layout, factored forms as [in, out].</summary>
    public virtual WeightLayout Layout => WeightLayout.InOut;

    /// <summary>The matrix this projection applies, as [in, out] (y = x W); a new tensor for factored forms.</summary>
    public abstract Tensor WeightInOut();

    protected abstract Tensor Apply(Tensor x);

    public sealed override Tensor forward(Tensor x)
    {
        var y = Apply(x);
        Probe?.OnForward(this, x, y);
        return y;
    }
}

/// <summary>A dense projection; its weight is kept in the checkpoint's layout so names and shapes map one to one.</summary>
public sealed class DenseLinear : LinearMap
{
#pragma warning disable IDE1006 // names follow the checkpoint keys
    private readonly Parameter weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006
    public override WeightLayout Layout { get; }

    public DenseLinear(Tensor weight, Tensor? bias, WeightLayout layout)
        : base(nameof(DenseLinear),
               (int)(layout == WeightLayout.InOut ? weight.shape[0] : weight.shape[1]),
               (int)(layout == WeightLayout.InOut ? weight.shape[1] : weight.shape[0]))
    {
        this.weight = weight as Parameter ?? new Parameter(weight, requires_grad: false);
        this.bias = bias is null ? null : bias as Parameter ?? new Parameter(bias, requires_grad: false);
        Layout = layout;
        RegisterComponents();
    }

    public static DenseLinear FromSource(TensorSource src, string prefix, int inFeatures, int outFeatures, WeightLayout layout, bool hasBias)
    {
        var w = layout == WeightLayout.InOut
            ? src.Take(prefix + ".weight", inFeatures, outFeatures)
            : src.Take(prefix + ".weight", outFeatures, inFeatures);
        var b = hasBias ? src.TakeZeros(prefix + ".bias", outFeatures) : null;
        return new DenseLinear(w, b, layout);
    }

    public Parameter Weight => weight;
    public override Parameter? Bias => bias;

    public override Tensor WeightInOut() => Layout == WeightLayout.InOut ? weight : weight.t();

    protected override Tensor Apply(Tensor x) => Layout == WeightLayout.InOut
        ? (bias is null ? x.matmul(weight) : torch.add(x.matmul(weight), bias, Scalars.One))
        : functional.linear(x, weight, bias);
}

/// <summary>
/// Basis Sharing's layer: y = (x · basis) · coeff + b. The basis [in, k] is one Parameter shared by every
/// layer of its group (one storage); coeff [k, out] and the bias belong to this layer.
/// </summary>
public sealed class SharedBasisLinear : LinearMap
{
#pragma warning disable IDE1006
    private readonly Parameter basis;
    private readonly Parameter coeff;
    private readonly Parameter? bias;
#pragma warning restore IDE1006

    public SharedBasisLinear(Parameter sharedBasis, Tensor coefficients, Tensor? bias)
        : base(nameof(SharedBasisLinear), (int)sharedBasis.shape[0], (int)coefficients.shape[1])
    {
        if (sharedBasis.shape[1] != coefficients.shape[0])
            throw new ArgumentException($"basis rank {sharedBasis.shape[1]} does not match coefficients {coefficients.shape[0]}");
        basis = sharedBasis;
        coeff = coefficients as Parameter ?? new Parameter(coefficients, requires_grad: false);
        this.bias = bias is null ? null : bias as Parameter ?? new Parameter(bias, requires_grad: false);
        RegisterComponents();
    }

    public int Rank => (int)basis.shape[1];
    public Parameter Basis => basis;
    public Parameter Coefficients => coeff;
    public override Parameter? Bias => bias;

    public override Tensor WeightInOut() => basis.matmul(coeff);

    protected override Tensor Apply(Tensor x)
    {
        var y = x.matmul(basis).matmul(coeff);
        return bias is null ? y : y.add(bias, Scalars.One);
    }
}

/// <summary>LayerNorm over the last dimension with weight and bias (GPT-2, ViT).</summary>
public sealed class LayerNorm : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter weight;
    private readonly Parameter bias;
#pragma warning restore IDE1006
    private readonly double _eps;

    public LayerNorm(TensorSource src, string prefix, int size, double eps) : base(nameof(LayerNorm))
    {
        weight = new Parameter(src.TakeOnes(prefix + ".weight", size), requires_grad: false);
        bias = new Parameter(src.TakeZeros(prefix + ".bias", size), requires_grad: false);
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        functional.layer_norm(x, [x.shape[^1]], weight, bias, _eps);
}

/// <summary>LLaMA's RMSNorm: x / sqrt(mean(x²) + eps) · weight.</summary>
public sealed class RmsNorm : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter weight;
#pragma warning restore IDE1006
    private readonly double _eps;

    public RmsNorm(TensorSource src, string prefix, int size, double eps) : base(nameof(RmsNorm))
    {
        weight = new Parameter(src.TakeOnes(prefix + ".weight", size), requires_grad: false);
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        x.mul(torch.rsqrt(x.PowScalar(2).mean([-1L], keepdim: true).AddScalar(_eps))).mul(weight);
}

/// <summary>A lookup table [num, dim] named like the checkpoint's embedding.</summary>
public sealed class TokenEmbedding : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Parameter weight;
#pragma warning restore IDE1006

    public TokenEmbedding(TensorSource src, string prefix, int num, int dim) : base(nameof(TokenEmbedding))
    {
        weight = new Parameter(src.Take(prefix + ".weight", num, dim), requires_grad: false);
        RegisterComponents();
    }

    public Parameter Weight => weight;

    public override Tensor forward(Tensor ids) =>
        weight.index_select(0, ids.reshape(-1)).reshape([.. ids.shape, weight.shape[1]]);
}

/// <summary>Activation functions by their Hugging Face names.</summary>
public static class Activations
{
    private static readonly double Sqrt2OverPi = Math.Sqrt(2.0 / Math.PI);

    public static Tensor Apply(string name, Tensor x) => name switch
    {
        // GPT-2's tanh approximation 0.5·x·(1 + tanh(z)) written as x·sigmoid(2z): the same function, and its
        // double backward (Hessian-vector products) is 10% cheaper than that of libtorch's fused kernel.
        "gelu_new" => x.mul(torch.sigmoid(x.add(x.PowScalar(3).MulScalar(0.044715), Scalars.One).MulScalar(2 * Sqrt2OverPi))),
        "gelu" => functional.gelu(x),
        "relu" => functional.relu(x),
        "silu" => functional.silu(x),
        _ => throw new ArgumentException($"unknown activation '{name}'"),
    };
}

/// <summary>
/// Scaled dot-product attention. Without autograd it is libtorch's fused kernel (flash attention on CPU:
/// 17% faster evaluation). With autograd it is written out with an explicit softmax, because the fused CPU
/// kernel's backward cannot be differentiated again; causal attention over long sequences is then computed
/// in query chunks, each against only the keys it may see: the same numbers, and a third less of the score
/// tensors that dominate the cost of Hessian-vector products.
/// </summary>
public static class Attention
{
    private const int ChunkSize = 64;

    /// <param name="q">[B, H, T, D]</param>
    /// <param name="k">[B, H, S, D]</param>
    /// <param name="v">[B, H, S, D]</param>
    /// <param name="window">causal only: query i sees key j when 0 ≤ i − j &lt; window (Mistral's sliding window); null: every j ≤ i</param>
    /// <param name="scale">the factor on q·k; null: 1/√D</param>
    public static Tensor Compute(Tensor q, Tensor k, Tensor v, bool causal, int? window = null, double? scale = null)
    {
        if (window is not null && (!causal || window <= 0)) throw new ArgumentException($"a sliding window ({window}) needs causal attention and a positive width");
        if (!torch.is_grad_enabled())
        {
            if (window is null && scale is null) return functional.scaled_dot_product_attention(q, k, v, null!, 0.0, causal);
            long tq = q.shape[^2], sk = k.shape[^2];
            // Boolean mask: true where a query may attend (libtorch's convention).
            using var allowed = window is null ? null : torch.logical_not(Masked(tq, sk, 0, window, q.device));
            // The fused kernel scales by 1/√D; a different factor is folded into q.
            using var qs = scale is null ? null : q.MulScalar(scale.Value * Math.Sqrt(q.shape[^1]));
            return functional.scaled_dot_product_attention(qs ?? q, k, v, allowed!, 0.0, causal && window is null);
        }
        // Scale q (T×D) rather than the scores (T×S): fewer large elementwise passes in double backward.
        q = q.MulScalar(scale ?? 1.0 / Math.Sqrt(q.shape[^1]));
        long t = q.shape[^2], s = k.shape[^2];
        if (!causal) return functional.softmax(q.matmul(k.transpose(-2, -1)), -1).matmul(v);
        if (t != s || t <= ChunkSize) return CausalBlock(q, k, v, 0, window);
        var outputs = new List<Tensor>();
        for (long start = 0; start < t; start += ChunkSize)
        {
            long end = Math.Min(start + ChunkSize, t);
            var qc = q.narrow(-2, start, end - start);
            outputs.Add(CausalBlock(qc, k.narrow(-2, 0, end), v.narrow(-2, 0, end), start, window));
        }
        return torch.cat(outputs, -2);
    }

    /// <summary>Queries at positions offset.. attend to keys 0..offset + their own index (and, with a window, no further back than window − 1).</summary>
    private static Tensor CausalBlock(Tensor q, Tensor k, Tensor v, long offset, int? window)
    {
        var scores = q.matmul(k.transpose(-2, -1));
        using var mask = Masked(q.shape[^2], k.shape[^2], offset, window, q.device);
        return functional.softmax(scores.MaskedFillScalar(mask, double.NegativeInfinity), -1).matmul(v);
    }

    /// <summary>[tq, sk], true where query offset + r may not see key j: j &gt; offset + r, or (with a window) offset + r − j ≥ window.</summary>
    private static Tensor Masked(long tq, long sk, long offset, int? window, Device device)
    {
        using var ones = torch.ones(tq, sk, dtype: ScalarType.Bool, device: device);
        var future = ones.triu(1 + offset);
        if (window is null) return future;
        using (future)
        using (var past = ones.tril(offset - window.Value))
            return future.logical_or(past);
    }
}
