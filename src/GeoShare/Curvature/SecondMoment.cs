using TorchSharp;
using static TorchSharp.torch;

namespace GeoShare.Curvature;

/// <summary>
/// One Kronecker factor of K-FAC: the second moment M = (1/n) Σ xxᵀ of n rows x of width d, float64. While fewer rows than
/// its width have been added it keeps the rows themselves (R [n, d], M = RᵀR / n): a 1B model's 8192-wide G from
/// 4 × 1,024 rows is 134 MB of float32 rows instead of a 537 MB matrix that costs n·d² multiply-adds to sum, and what K-FAC needs of
/// it (products, diagonal, trace, top eigenpairs) needs only R. From d rows on it is the dense sum (<see cref="GramSum"/>,
/// the rows added in their order: the same numbers as summing densely from the start).
/// </summary>
public sealed class SecondMoment : IDisposable
{
    private readonly List<Tensor> _rows = new();
    private Tensor? _sum;
    private Tensor? _dense;
    private long _count;
    private long _divisor = 1;
    private bool _completed;

    public long Width { get; }
    /// <summary>Rows added (n).</summary>
    public long Count => _count;
    /// <summary>Kept as rows (fewer rows than its width), not as the [d, d] matrix.</summary>
    public bool IsLowRank => _sum is null;

    public SecondMoment(long width) => Width = width;

    /// <summary>A dense moment already divided (a matrix made elsewhere; no rows were added: <see cref="Count"/> is 0); takes ownership.</summary>
    public static SecondMoment FromMatrix(Tensor m)
    {
        var s = new SecondMoment(m.shape[0]) { _sum = m, _completed = true };
        return s;
    }

    /// <summary>The moment of one batch of rows [.., d] (any float dtype): (1/rows) xᵀx.</summary>
    public static SecondMoment Of(Tensor rows, long width)
    {
        var m = new SecondMoment(width);
        using (var x = rows.reshape(-1, width)) m.Add(x);
        m.Complete(m.Count);
        return m;
    }

    /// <summary>
    /// Adds rows x [r, d] (the caller keeps its tensor). Kept rows are copied in float32 where x is no wider a type (a float32
    /// model's gradients: the same values, half the bytes of float64), else in float64; sums are float64.
    /// </summary>
    public void Add(Tensor x)
    {
        if (_completed) throw new InvalidOperationException("the moment is complete");
        if (x.shape[1] != Width) throw new ArgumentException($"rows of width {x.shape[1]}, the moment's is {Width}");
        _count += x.shape[0];
        if (_sum is not null)
        {
            _sum = Sum(_sum, x);
            return;
        }
        if (_count < Width)
        {
            var keep = x.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
            _rows.Add(x.detach().to_type(keep, copy: true).DetachFromDisposeScope());
            return;
        }
        // As many rows as the width: the dense sum from here on, the kept rows first (in their order).
        foreach (var r in _rows) _sum = Sum(_sum, r);
        _sum = Sum(_sum, x);
        foreach (var r in _rows) r.Dispose();
        _rows.Clear();
        _sum.DetachFromDisposeScope();
    }

    /// <summary>GramSum.Add of x in float64 (x itself where it is float64: the caller's tensor is never disposed here).</summary>
    private static Tensor Sum(Tensor? sum, Tensor x)
    {
        if (x.dtype == ScalarType.Float64) return GramSum.Add(sum, x);
        using var x64 = x.to_type(ScalarType.Float64, copy: true);
        return GramSum.Add(sum, x64);
    }

    /// <summary>Ends the sum: M = (Σ xxᵀ) / <paramref name="divisor"/> (K-FAC's G divides by the predictions, not the rows).</summary>
    public SecondMoment Complete(long divisor)
    {
        if (_completed) throw new InvalidOperationException("the moment is complete");
        _completed = true;
        _divisor = Math.Max(1, divisor);
        if (_sum is not null)
        {
            GramSum.Complete(_sum);
            _sum.DivScalar_(_divisor); // in place: no second [d, d]
            _divisor = 1;
        }
        else if (_rows.Count > 1)
        {
            var all = torch.cat(_rows.Select(r => r.to_type(_rows[0].dtype)).ToList(), 0).DetachFromDisposeScope();
            foreach (var r in _rows) r.Dispose();
            _rows.Clear();
            _rows.Add(all);
        }
        else if (_rows.Count == 0) _rows.Add(torch.zeros(0, Width, dtype: ScalarType.Float64).DetachFromDisposeScope());
        return this;
    }

    private Tensor Rows => _rows[0];

    /// <summary>The kept rows in float64 (a copy where they are kept in float32; the caller disposes it).</summary>
    private Tensor Rows64() => Rows.to_type(ScalarType.Float64, copy: true);

    /// <summary>The [d, d] matrix: the dense sum, or RᵀR / n made once on first use (analyze's full spectra, the tests).</summary>
    public Tensor Dense
    {
        get
        {
            Check();
            if (_sum is not null) return _sum;
            if (_dense is null)
            {
                using var rows = Rows64();
                var d = GramSum.Add(null, rows);
                GramSum.Complete(d);
                _dense = d.DivScalar_(_divisor).DetachFromDisposeScope();
            }
            return _dense;
        }
    }

    /// <summary>M·y for y [d, p].</summary>
    public Tensor Times(Tensor y)
    {
        Check();
        if (_sum is not null) return _sum.matmul(y);
        using var scope = torch.NewDisposeScope();
        var rows = Rows64();
        return rows.t().matmul(rows.matmul(y)).DivScalar_(_divisor).MoveToOuterDisposeScope();
    }

    public double Trace
    {
        get
        {
            Check();
            if (_sum is not null) return _sum.trace().item<double>();
            using var scope = torch.NewDisposeScope();
            return Rows64().PowScalar(2).sum().item<double>() / _divisor;
        }
    }

    /// <summary>diag M, [d] (a new tensor).</summary>
    public Tensor Diagonal()
    {
        Check();
        if (_sum is not null) return _sum.diagonal().clone();
        using var scope = torch.NewDisposeScope();
        return Rows64().PowScalar(2).sum([0L]).DivScalar_(_divisor).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The k largest eigenpairs (<see cref="KfacBlock.SymmetricTop(Func{Tensor, Tensor}, long, int, long, int)"/>): subspace
    /// iteration on <see cref="Times"/>, so a low-rank moment is never made dense; eigh of the matrix at most 256 wide.
    /// </summary>
    public (double[] Values, Tensor Vectors) Top(int k, long seed)
    {
        Check();
        if (Width <= 256) return KfacBlock.SymmetricTop(Dense, k, seed);
        if (_sum is not null) return KfacBlock.SymmetricTop(_sum.matmul, Width, k, seed);
        using var rows = Rows64(); // one float64 copy for the whole iteration, not one a step
        return KfacBlock.SymmetricTop(y =>
        {
            using var ry = rows.matmul(y);
            return rows.t().matmul(ry).DivScalar_(_divisor);
        }, Width, k, seed);
    }

    private void Check()
    {
        if (!_completed) throw new InvalidOperationException("the moment is not complete");
    }

    public void Dispose()
    {
        foreach (var r in _rows) r.Dispose();
        _rows.Clear();
        _sum?.Dispose();
        _dense?.Dispose();
    }
}
