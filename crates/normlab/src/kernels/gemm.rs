//! Matrix products on row-major slices, checked, over `matrixmultiply`'s
//! packed kernels. `matrixmultiply` runs single-threaded here: the layers
//! split work across threads themselves, in a fixed way, so results do not
//! depend on the number of threads.

use crate::real::{mul_add, Real, Strided};

/// How a row-major operand is read: as stored, or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// The shape of `c[m×n] = op(a)[m×k] · op(b)[k×n]`: `a` is stored row-major
/// as `m×k` when `op_a == N` and as `k×m` when `T`; likewise `b`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    pub op_a: Op,
    pub op_b: Op,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Product {
    /// `a·b`.
    pub fn nn(m: usize, n: usize, k: usize) -> Self {
        Product { op_a: Op::N, op_b: Op::N, m, n, k }
    }
    /// `a·bᵀ`.
    pub fn nt(m: usize, n: usize, k: usize) -> Self {
        Product { op_a: Op::N, op_b: Op::T, m, n, k }
    }
    /// `aᵀ·b`.
    pub fn tn(m: usize, n: usize, k: usize) -> Self {
        Product { op_a: Op::T, op_b: Op::N, m, n, k }
    }

    /// `(row step, column step)` of an operand stored `rows×cols` as `op` says.
    fn steps(op: Op, rows: usize, cols: usize) -> (isize, isize) {
        match op {
            Op::N => (cols as isize, 1),
            Op::T => (1, rows as isize),
        }
    }
}

/// `c = alpha · op(a)·op(b) + beta · c` for the shapes `p` gives; `beta ==
/// 0` overwrites `c` (NaNs in it do not leak).
pub fn gemm<T: Real>(p: Product, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let Product { op_a, op_b, m, n, k } = p;
    assert!(a.len() >= m * k, "gemm: a has {} values, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "gemm: b has {} values, needs {}", b.len(), k * n);
    assert!(c.len() >= m * n, "gemm: c has {} values, needs {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (a_rows, a_cols) = Product::steps(op_a, m, k);
    let (b_rows, b_cols) = Product::steps(op_b, k, n);
    let a = Strided { ptr: a.as_ptr(), row_step: a_rows, col_step: a_cols };
    let b = Strided { ptr: b.as_ptr(), row_step: b_rows, col_step: b_cols };
    let c = Strided { ptr: c.as_mut_ptr(), row_step: n as isize, col_step: 1 };
    // SAFETY: the asserts above guarantee every index the strides reach lies
    // inside the slices; c does not alias a or b (distinct borrows).
    unsafe { T::gemm_raw((m, k, n), alpha, a, b, beta, c) }
}

/// Output rows per block of [`rows_times_weights`]: four independent
/// multiply-add chains, each reading the same input vector.
const DOT_ROWS: usize = 4;
/// Values per chain step: one AVX-512 vector of f32.
const DOT_LANES: usize = 16;

multiversion! {
    /// `y[i][o] = Σ_q x[i][q]·w[o][q]` (+ `y[i][o]` when `accumulate`) for
    /// `x` of `n` rows of `k` and `w` of `y.len()/n` rows of `k`: a linear
    /// layer's forward pass as dot products of contiguous rows, for a
    /// handful of rows. `gemm` packs the whole weight matrix on every call,
    /// which at one row costs far more than the products (a 784x100 layer
    /// at batch 1: ~20 µs of packing for 78 k multiply-adds). Each dot
    /// product runs 16 lanes, four output rows at a time; the lanes are
    /// summed pairwise at the end.
    pub fn rows_times_weights<T: Real>(x: &[T], w: &[T], k: usize, accumulate: bool, y: &mut [T]) {
        if k == 0 || y.is_empty() {
            if !accumulate {
                y.fill(T::zero());
            }
            return;
        }
        let n = x.len() / k;
        let fo = y.len() / n.max(1);
        assert!(w.len() >= fo * k && x.len() == n * k && y.len() == n * fo, "rows_times_weights: sizes disagree");
        let body = k - k % DOT_LANES;
        let lanes_sum = |acc: &[T; DOT_LANES]| {
            let mut v = *acc;
            let mut width = DOT_LANES;
            while width > 1 {
                width /= 2;
                for l in 0..width {
                    v[l] += v[l + width];
                }
            }
            v[0]
        };
        for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(fo)) {
            let (x_body, x_tail) = xi.split_at(body);
            let mut o = 0;
            while o < fo {
                let rows = (fo - o).min(DOT_ROWS);
                let mut acc = [[T::zero(); DOT_LANES]; DOT_ROWS];
                for (c, xc) in x_body.chunks_exact(DOT_LANES).enumerate() {
                    for r in 0..rows {
                        let wc = &w[(o + r) * k + c * DOT_LANES..][..DOT_LANES];
                        for l in 0..DOT_LANES {
                            acc[r][l] = mul_add(xc[l], wc[l], acc[r][l]);
                        }
                    }
                }
                for r in 0..rows {
                    let wr = &w[(o + r) * k..][..k];
                    let mut total = lanes_sum(&acc[r]);
                    for (&a, &b) in x_tail.iter().zip(&wr[body..]) {
                        total = mul_add(a, b, total);
                    }
                    yi[o + r] = if accumulate { yi[o + r] + total } else { total };
                }
                o += rows;
            }
        }
    }
}

/// The plain triple loop `gemm` is tested against.
pub fn gemm_reference<T: Real>(p: Product, alpha: T, a: &[T], b: &[T], beta: T, c: &mut [T]) {
    let Product { op_a, op_b, m, n, k } = p;
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::zero();
            for q in 0..k {
                let av = if op_a == Op::N { a[i * k + q] } else { a[q * m + i] };
                let bv = if op_b == Op::N { b[q * n + j] } else { b[j * k + q] };
                acc += av * bv;
            }
            let old = if beta == T::zero() { T::zero() } else { beta * c[i * n + j] };
            c[i * n + j] = alpha * acc + old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_for_every_transpose() {
        let (m, n, k) = (7, 5, 11);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 17) as f64 - 8.0) / 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 53 % 13) as f64 - 6.0) / 5.0).collect();
        for op_a in [Op::N, Op::T] {
            for op_b in [Op::N, Op::T] {
                let mut c1: Vec<f64> = (0..m * n).map(|i| i as f64).collect();
                let mut c2 = c1.clone();
                gemm(Product { op_a, op_b, m, n, k }, 0.5, &a, &b, 2.0, &mut c1);
                gemm_reference(Product { op_a, op_b, m, n, k }, 0.5, &a, &b, 2.0, &mut c2);
                for (x, y) in c1.iter().zip(&c2) {
                    assert!((x - y).abs() < 1e-12, "{op_a:?}{op_b:?}: {x} vs {y}");
                }
            }
        }
    }

    /// The dot-product form of `x·wᵀ` against the reference, over lengths
    /// with and without a tail past whole vectors and output counts with
    /// and without a partial block of rows, overwriting and accumulating.
    #[test]
    fn rows_times_weights_matches_reference() {
        for (n, k, fo) in [(1, 784, 100), (3, 120, 84), (2, 7, 5), (1, 16, 1), (4, 33, 10)] {
            let x: Vec<f64> = (0..n * k).map(|i| ((i * 37 % 17) as f64 - 8.0) / 3.0).collect();
            let w: Vec<f64> = (0..fo * k).map(|i| ((i * 53 % 13) as f64 - 6.0) / 5.0).collect();
            for accumulate in [false, true] {
                let start: Vec<f64> = (0..n * fo).map(|i| i as f64).collect();
                let (mut got, mut want) = (start.clone(), start.clone());
                rows_times_weights(&x, &w, k, accumulate, &mut got);
                let beta = if accumulate { 1.0 } else { 0.0 };
                gemm_reference(Product::nt(n, fo, k), 1.0, &x, &w, beta, &mut want);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-9 * (1.0 + b.abs()), "{n}x{k}x{fo}: {a} vs {b}");
                }
            }
        }
    }
}
