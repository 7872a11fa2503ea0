using GeoShare.Curvature;
using GeoShare.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace GeoShare.Tests;

/// <summary>The curvature engine against exact Hessians assembled column by column and finite differences.</summary>
public class CurvatureTests
{
    private static Tensor Gradient(Func<Tensor> loss, IReadOnlyList<Tensor> ps)
    {
        foreach (var p in ps) p.requires_grad = true;
        try
        {
            var g = torch.autograd.grad([loss()], ps.ToList(), allow_unused: true);
            return torch.cat(g.Select((x, i) => (x is null || x.IsInvalid ? torch.zeros_like(ps[i]) : x).reshape(-1)).ToList()).detach();
        }
        finally { foreach (var p in ps) p.requires_grad = false; }
    }

    /// <summary>Central differences of the gradient, column j = (g(θ + h e_j) − g(θ − h e_j)) / 2h.</summary>
    private static Tensor FiniteDifferenceHessian(Func<Tensor> loss, IReadOnlyList<Tensor> ps, double h = 1e-5)
    {
        long n = ps.Sum(p => p.numel());
        var result = torch.zeros(n, n, dtype: ScalarType.Float64);
        long col = 0;
        foreach (var p in ps)
        {
            var flat = p.view(-1);
            for (long j = 0; j < p.numel(); j++, col++)
            {
                double orig;
                using (torch.no_grad()) { orig = flat[j].item<double>(); flat[j] = orig + h; }
                var plus = Gradient(loss, ps);
                using (torch.no_grad()) flat[j] = orig - h;
                var minus = Gradient(loss, ps);
                using (torch.no_grad()) flat[j] = orig;
                result[TensorIndex.Colon, col] = plus.sub(minus).DivScalar(2 * h);
            }
        }
        return result;
    }

    public static IEnumerable<object[]> Architectures() =>
    [
        ["gpt2", new[] { "transformer.h.1.attn.c_attn.weight", "transformer.h.0.ln_2.weight" }],
        ["llama", new[] { "model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.gate_proj.weight" }],
        ["vit", new[] { "vit.encoder.layer.1.attention.attention.query.weight", "vit.encoder.layer.0.layernorm_after.bias" }],
    ];

    private static (PretrainedModel, LossBatch) Tiny(string arch)
    {
        var model = arch switch { "gpt2" => TinyModels.Gpt2(), "llama" => TinyModels.Llama(), _ => TinyModels.Vit() };
        LossBatch batch = arch == "vit" ? TinyModels.ImageBatch() : TinyModels.TokenBatch(model);
        return (model, batch);
    }

    [Theory]
    [MemberData(nameof(Architectures))]
    public void ExactHessianFromProductsMatchesFiniteDifferencesAndIsSymmetric(string arch, string[] block)
    {
        var (model, batch) = Tiny(arch);
        var all = model.ParametersByName();
        var ps = block.Select(b => (Tensor)all[b]).ToList();
        using var h = new BlockHessian(model, batch, ps);
        using var exact = h.Operator.Dense();
        Assert.Equal(ps.Sum(p => p.numel()), exact.shape[0]);
        double asym = exact.sub(exact.t()).norm().item<double>() / exact.norm().item<double>();
        Assert.True(asym < 1e-10, $"asymmetry {asym:E2}");
        using var fd = FiniteDifferenceHessian(() => batch.Loss(model), ps);
        double rel = TensorAssert.RelativeError(exact, fd);
        Assert.True(rel < 1e-7, $"HVP Hessian vs finite differences: {rel:E2}");
        Assert.True(exact.norm().item<double>() > 1e-3, "Hessian is trivially small");
    }

    [Fact]
    public void LanczosTopAndBottomAndTraceAgreeWithEigvalshOfTheExactHessian()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model);
        var ps = model.ParametersByName().Where(p => p.Key.StartsWith("transformer.h.")).Select(p => (Tensor)p.Value).ToList();
        using var h = new BlockHessian(model, batch, ps);
        Assert.True(h.Dimension > 1000, $"block of {h.Dimension}");
        using var exact = h.Exact();
        var evals = torch.linalg.eigvalsh(exact).data<double>().ToArray(); // ascending
        double scale = evals.Select(Math.Abs).Max();

        var top = h.Eigenvalues(6, SpectrumEnd.Largest, new LanczosOptions { Tolerance = 1e-12, BasisSize = 40 });
        Assert.True(top.Converged);
        for (int i = 0; i < 6; i++)
            Assert.True(Math.Abs(top.Values[i] - evals[^(i + 1)]) <= 1e-8 * Math.Abs(evals[^(i + 1)]), $"top {i}: {top.Values[i]} vs {evals[^(i + 1)]}");
        Assert.True(top.Restarts > 0, "the test should exercise restarts");

        var bottom = h.Eigenvalues(3, SpectrumEnd.Smallest, new LanczosOptions { Tolerance = 1e-12, BasisSize = 40 });
        Assert.True(evals[0] < 0, "the Hessian here is indefinite");
        for (int i = 0; i < 3; i++)
            Assert.True(Math.Abs(bottom.Values[i] - evals[i]) <= 1e-8 * scale, $"bottom {i}: {bottom.Values[i]} vs {evals[i]}");

        // Ritz vectors are eigenvectors: ‖Hx − λx‖ small.
        var x = top.Vectors[0];
        double res = h.Operator.Apply(x).sub(x.MulScalar(top.Values[0])).norm().item<double>();
        Assert.True(res <= 1e-8 * scale, $"residual {res:E2}");

        double trace = evals.Sum();
        Assert.True(Math.Abs(exact.trace().item<double>() - trace) <= 1e-9 * Math.Abs(trace) + 1e-12);
        var hutch = h.Trace(products: 200, seed: 3);
        Assert.True(Math.Abs(hutch.Value - trace) <= 4 * hutch.StandardError, $"Hutchinson {hutch.Value} ± {hutch.StandardError} vs {trace}");
        Assert.True(hutch.StandardError > 0);
        var hpp = h.Trace(products: 300, hutchPlusPlus: true, seed: 4);
        Assert.True(Math.Abs(hpp.Value - trace) <= 4 * hpp.StandardError + 1e-9 * Math.Abs(trace), $"Hutch++ {hpp.Value} ± {hpp.StandardError} vs {trace}");
    }

    [Fact]
    public void BlockProductsAndJointTraceSamplesAgreeWithTheExactHessiansDiagonalBlocks()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model);
        var all = model.ParametersByName();
        var ps = new[] { "transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.ln_1.weight" }.Select(n => (Tensor)all[n]).ToList();
        using var h = new HessianOperator(() => batch.Loss(model), ps);
        using var exact = h.Dense();
        var sizes = h.BlockSizes;
        long offset = 0;
        var gen = new Generator(5);
        var exactTraces = new double[ps.Count];
        for (int b = 0; b < ps.Count; b++)
        {
            using var block = exact.narrow(0, offset, sizes[b]).narrow(1, offset, sizes[b]);
            exactTraces[b] = block.trace().item<double>();
            using var v = torch.randn(sizes[b], dtype: h.DType, generator: gen);
            using var hv = h.ApplyBlock(b, v);
            double rel = TensorAssert.RelativeError(hv, block.mv(v));
            Assert.True(rel < 1e-10, $"block {b}: H_bb v from the joint graph vs the exact block: {rel:E2}");
            offset += sizes[b];
        }
        var joint = TraceEstimators.BlockHutchinson(h.Apply, sizes, h.DType, probes: 400, seed: 2);
        for (int b = 0; b < ps.Count; b++)
        {
            Assert.True(joint[b].StandardError > 0);
            Assert.True(Math.Abs(joint[b].Value - exactTraces[b]) <= 4 * joint[b].StandardError,
                $"block {b}: joint Hutchinson {joint[b].Value} ± {joint[b].StandardError} vs exact {exactTraces[b]}");
        }
    }

    [Fact]
    public void LanczosIsDeterministicForASeed()
    {
        var model = TinyModels.Llama();
        using var batch = TinyModels.TokenBatch(model);
        var ps = new[] { (Tensor)model.ParametersByName()["model.layers.1.mlp.up_proj.weight"] };
        double[] Run() { using var h = new BlockHessian(model, batch, ps); return h.Eigenvalues(3, options: new LanczosOptions { Seed = 9, Tolerance = 1e-3 }).Values; }
        Assert.Equal(Run(), Run());
    }

    [Fact]
    public void SpectralDensityIntegratesToOneAndCoversTheSpectrum()
    {
        var model = TinyModels.Vit();
        using var batch = TinyModels.ImageBatch();
        var ps = model.ParametersByName().Where(p => p.Key.Contains("layer.1.")).Select(p => (Tensor)p.Value).ToList();
        using var h = new BlockHessian(model, batch, ps);
        var d = h.Density(runs: 3, steps: 40, seed: 1);
        double integral = 0;
        for (int i = 1; i < d.Grid.Length; i++) integral += 0.5 * (d.Density[i] + d.Density[i - 1]) * (d.Grid[i] - d.Grid[i - 1]);
        Assert.InRange(integral, 0.98, 1.02);
        using var exact = h.Exact();
        var evals = torch.linalg.eigvalsh(exact).data<double>().ToArray();
        Assert.True(d.Grid[0] <= evals[0] && d.Grid[^1] >= evals[^1]);
        // Quadrature of the first moment is the trace / n.
        double mean = d.Nodes.Zip(d.Weights, (nd, w) => nd.Zip(w, (a, b) => a * b).Sum()).Average();
        Assert.True(Math.Abs(mean - evals.Average()) < 0.5 * evals.Select(Math.Abs).Average());
    }

    [Theory]
    [InlineData(WeightLayout.InOut)]
    [InlineData(WeightLayout.OutIn)]
    public void KfacEqualsTheExactGaussNewtonBlockOfALinearLayerWithLinearOutput(WeightLayout layout)
    {
        var gen = new Generator(11);
        int din = 5, dout = 3, rows = 40;
        var w = torch.randn(layout == WeightLayout.InOut ? [din, dout] : [dout, din], dtype: ScalarType.Float64, generator: gen);
        var layer = new DenseLinear(w, torch.randn([dout], dtype: ScalarType.Float64, generator: gen), layout);
        using var batch = new RegressionBatch(torch.randn([rows, din], dtype: ScalarType.Float64, generator: gen), torch.randn([rows, dout], dtype: ScalarType.Float64, generator: gen));
        // The loss is quadratic in W, so its Hessian is the Gauss-Newton block exactly.
        using var h = new BlockHessian(layer, batch, [layer.Weight]);
        using var exact = h.Exact();
        var kfac = KfacBlock.Compute(layer, batch, [("w", (LinearMap)layer)]).Single();
        var kron = torch.stack(Enumerable.Range(0, din * dout).Select(j =>
        {
            var e = torch.zeros(din * dout, dtype: ScalarType.Float64);
            e[j] = 1.0;
            return kfac.Apply(e);
        }).ToList(), 1);
        Assert.True(TensorAssert.RelativeError(kron, exact) < 1e-12, $"K-FAC vs exact: {TensorAssert.RelativeError(kron, exact):E2}");
        var exactEvals = torch.linalg.eigvalsh(exact).data<double>().Reverse().ToArray();
        var (top, vecs) = kfac.Top(4, seed: 0);
        for (int i = 0; i < 4; i++) Assert.True(Math.Abs(top[i] - exactEvals[i]) < 1e-10 * exactEvals[0]);
        var v0 = vecs[0];
        Assert.True(exact.mv(v0).sub(v0.MulScalar(top[0])).norm().item<double>() < 1e-10 * exactEvals[0]);
        Assert.True(Math.Abs(kfac.Trace - exactEvals.Sum()) < 1e-10 * exactEvals.Sum());
    }

    [Fact]
    public void SampledFisherFactorsConvergeToTheExactCrossEntropyFactors()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model, windows: 6);
        var layer = model.GetProjection("transformer.h.1.mlp.c_fc");
        var exact = KfacBlock.Compute(model, batch, [("c_fc", layer)], samples: 0).Single();
        var sampled = KfacBlock.Compute(model, batch, [("c_fc", layer)], samples: 400, seed: 1).Single();
        Assert.True(exact.Spectrum().All(v => v >= -1e-12));
        Assert.True(TensorAssert.RelativeError(sampled.A, exact.A) < 1e-14, "A does not depend on the samples");
        double rel = TensorAssert.RelativeError(sampled.G, exact.G);
        Assert.True(rel < 0.1, $"Monte-Carlo G vs exact G: {rel:F3}");
        var other = KfacBlock.Compute(model, batch, [("c_fc", layer)], samples: 400, seed: 1).Single();
        Assert.Equal(sampled.G.data<double>().ToArray(), other.G.data<double>().ToArray());
    }

    /// <summary>A symmetric positive definite matrix Q diag(λ) Qᵀ with λᵢ = scale·e^(−i/decay) and a random orthogonal Q.</summary>
    private static Tensor RandomSpd(int n, double scale, double decay, Generator gen)
    {
        var q = torch.linalg.qr(torch.randn(n, n, dtype: ScalarType.Float64, generator: gen)).Q;
        var lambda = Scalars.Arange(n, ScalarType.Float64).DivScalar(-decay).exp().MulScalar(scale);
        return q.mul(lambda.unsqueeze(0)).matmul(q.t());
    }

    /// <summary>The k largest λᵢ(A)·μⱼ(G) from full eigendecompositions: the reference for the subspace iteration.</summary>
    private static double[] FullEighTop(Tensor a, Tensor g, int k)
    {
        var la = torch.linalg.eigvalsh(a).data<double>().ToArray();
        var lg = torch.linalg.eigvalsh(g).data<double>().ToArray();
        return la.SelectMany(x => lg.Select(y => x * y)).OrderByDescending(v => v).Take(k).ToArray();
    }

    [Theory]
    [InlineData(300, 280)] // both factors by subspace iteration
    [InlineData(120, 400)] // one by eigh (at most 256 rows), one by subspace iteration
    public void KroneckerTopAgreesWithFullEighOfTheFactors(int din, int dout)
    {
        var gen = new Generator(21);
        var a = RandomSpd(din, 3.0, 25, gen);
        var g = RandomSpd(dout, 0.5, 15, gen);
        const int k = 6;
        var (values, vectors) = KfacBlock.KroneckerTop(a, g, k, seed: 4);
        var reference = FullEighTop(a, g, k);
        Assert.Equal(k, values.Length);
        Assert.Equal(new long[] { k, din, dout }, vectors.shape);
        for (int i = 0; i < k; i++)
        {
            Assert.True(Math.Abs(values[i] - reference[i]) <= 1e-10 * reference[i], $"λ{i}: {values[i]:R} vs full eigh {reference[i]:R}");
            // (A ⊗ G) vec(V) = vec(A V G) for V [in, out]: each vector is an eigenvector of the Kronecker product.
            var v = vectors[i];
            double residual = a.matmul(v).matmul(g).sub(v.MulScalar(values[i])).norm().item<double>();
            Assert.True(residual <= 1e-8 * reference[0], $"pair {i}: residual {residual:E2}");
            Assert.Equal(1.0, v.norm().item<double>(), 1e-12);
        }
    }

    [Fact]
    public void KfacTopOfRealGpt2BlocksAgreesWithFullEigh()
    {
        var model = ModelLoader.Load(Repo.Gpt2, ScalarType.Float32);
        var tokenizer = GeoShare.Data.ByteLevelBpeTokenizer.Load(Repo.Gpt2);
        var windows = GeoShare.Data.TokenWindows.FromFile(Repo.Corpus("valid"), tokenizer, windowLength: 256);
        using var batch = LanguageModelBatch.FromWindows(windows, windows.Select(2, 1));
        // c_fc: G is 1024 × 1024; c_proj: A is 1024 × 1024 (subspace iteration on the large factor, eigh on the other).
        string[] names = ["transformer.h.3.mlp.c_fc", "transformer.h.3.mlp.c_proj"];
        var blocks = KfacBlock.Compute(model, batch, names.Select(n => (n, model.GetProjection(n))).ToList());
        foreach (var k in blocks)
        {
            Assert.True(Math.Max(k.A.shape[0], k.G.shape[0]) > 256, "the test should exercise the subspace iteration");
            var (values, vectors) = k.Top(8, seed: 3);
            var reference = k.Spectrum();
            for (int i = 0; i < 8; i++)
                Assert.True(Math.Abs(values[i] - reference[i]) <= 1e-8 * reference[i], $"{k.Name} λ{i}: {values[i]:R} vs full eigh {reference[i]:R}");
            // The vectors are flat in the weight's layout: (A ⊗ G) v = λ v through the block's own product.
            double residual = k.Apply(vectors[0]).sub(vectors[0].MulScalar(values[0])).norm().item<double>();
            Assert.True(residual <= 1e-6 * values[0], $"{k.Name}: residual {residual:E2}");
            k.Dispose();
        }
    }

    [Fact]
    public void TheEngineOnOneJointGraphAgreesWithASeparateGraphPerBlock()
    {
        var model = TinyModels.Gpt2();
        using var batch = TinyModels.TokenBatch(model);
        string[][] blocks =
        [
            ["transformer.h.0.attn.c_attn.weight"],
            ["transformer.h.1.ln_1.weight", "transformer.h.1.ln_1.bias"], // several parameters, dense (small)
            ["transformer.h.1.mlp.c_fc.weight"],
        ];
        var options = new CurvatureOptions { Top = 3, Bottom = 2, Tolerance = 1e-11, Trace = TraceEstimator.Hutchinson, TraceProducts = 8, DenseBelow = 100, KeepVectors = true, KeepGradient = true };
        var results = CurvatureEngine.Collect(model, batch, blocks, options);
        Assert.Equal(["lanczos", "dense", "lanczos"], results.Select(r => r.Method));
        for (int b = 0; b < blocks.Length; b++)
        {
            using var h = BlockHessian.For(model, batch, blocks[b]);
            using var exact = h.Exact();
            var evals = torch.linalg.eigvalsh(exact).data<double>().ToArray(); // ascending
            double scale = evals.Select(Math.Abs).Max();
            var r = results[b];
            Assert.Equal(h.Dimension, r.Parameters);
            for (int i = 0; i < 3; i++)
                Assert.True(Math.Abs(r.TopEigenvalues[i] - evals[^(i + 1)]) <= 1e-8 * scale, $"block {b} top {i}: {r.TopEigenvalues[i]} vs {evals[^(i + 1)]}");
            for (int i = 0; i < 2; i++)
                Assert.True(Math.Abs(r.BottomEigenvalues![i] - evals[i]) <= 1e-8 * scale, $"block {b} bottom {i}: {r.BottomEigenvalues![i]} vs {evals[i]}");
            // Kept vectors are eigenvectors of the block's Hessian; the kept gradient is the block's gradient.
            var v = r.TopVectors![0];
            Assert.Equal(new long[] { 3, h.Dimension }, r.TopVectors.shape);
            Assert.True(exact.mv(v).sub(v.MulScalar(r.TopEigenvalues[0])).norm().item<double>() <= 1e-7 * scale);
            Assert.True(TensorAssert.RelativeError(r.Gradient!, h.Operator.Gradient) < 1e-12);
            Assert.Equal(h.Operator.Loss, r.Loss!.Value, 1e-12);
            if (r.Method == "dense") Assert.Equal(evals.Sum(), r.Trace!.Value, 1e-12);
            else Assert.True(r.TraceStandardError > 0 && r.HessianVectorProducts > 8);
            r.Dispose();
        }
    }

    [Fact]
    public void UnknownBlockNamesListCloseMatches()
    {
        var model = TinyModels.Gpt2();
        var e = Assert.Throws<UsageException>(() => CurvatureEngine.ResolveBlocks(model, ["transformer.h.1.mlp.c_fc.wieght"]));
        Assert.Contains("transformer.h.1.mlp.c_fc.weight", e.Message);
        var blocks = CurvatureEngine.ResolveBlocks(model, ["transformer.h.0.attn.c_proj", "transformer.h.1.ln_1.weight+transformer.h.1.ln_1.bias"]);
        Assert.Equal(["transformer.h.0.attn.c_proj.weight"], blocks[0]);
        Assert.Equal(2, blocks[1].Length);
        Assert.Equal(8, CurvatureEngine.ResolveBlocks(model, null).Count);
    }
}
