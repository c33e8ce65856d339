//! Matrix products on row-major slices, checked, over `matrixmultiply`'s
//! packed kernels. `matrixmultiply` runs single-threaded here: the layers
//! split work across threads themselves, in a fixed way, so results do not
//! depend on the number of threads.

use crate::real::Real;

/// How a row-major operand is read: as stored, or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    N,
    T,
}

/// `c[m×n] = alpha · op(a)[m×k] · op(b)[k×n] + beta · c`
///
/// `a` is stored row-major as `m×k` when `op_a == N` and as `k×m` when `T`;
/// likewise `b`. `beta == 0` overwrites `c` (NaNs in it do not leak).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    assert!(a.len() >= m * k, "gemm: a has {} values, needs {}", a.len(), m * k);
    assert!(b.len() >= k * n, "gemm: b has {} values, needs {}", b.len(), k * n);
    assert!(c.len() >= m * n, "gemm: c has {} values, needs {}", c.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = match op_a {
        Op::N => (k as isize, 1),
        Op::T => (1, m as isize),
    };
    let (rsb, csb) = match op_b {
        Op::N => (n as isize, 1),
        Op::T => (1, k as isize),
    };
    // SAFETY: the asserts above guarantee every index the strides reach lies
    // inside the slices; c does not alias a or b (distinct borrows).
    unsafe {
        T::gemm_raw(m, k, n, alpha, a.as_ptr(), rsa, csa, b.as_ptr(), rsb, csb, beta, c.as_mut_ptr(), n as isize, 1)
    }
}

/// The plain triple loop `gemm` is tested against.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference<T: Real>(
    op_a: Op,
    op_b: Op,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::zero();
            for p in 0..k {
                let av = if op_a == Op::N { a[i * k + p] } else { a[p * m + i] };
                let bv = if op_b == Op::N { b[p * n + j] } else { b[j * k + p] };
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
                gemm(op_a, op_b, m, n, k, 0.5, &a, &b, 2.0, &mut c1);
                gemm_reference(op_a, op_b, m, n, k, 0.5, &a, &b, 2.0, &mut c2);
                for (x, y) in c1.iter().zip(&c2) {
                    assert!((x - y).abs() < 1e-12, "{op_a:?}{op_b:?}: {x} vs {y}");
                }
            }
        }
    }
}
