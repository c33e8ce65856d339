//! The hot loops, and nothing else: no I/O, no policy, no shapes beyond what
//! the loop needs. Each has a plain reference it is tested against.

pub mod batch_norm;
pub mod conv;
pub mod conv_direct;
pub mod gemm;

use crate::real::Real;

/// `Σ v` with eight independent accumulators: vectorizes, and the order of
/// additions is fixed (so the result does not depend on threads).
#[inline]
pub fn sum<T: Real>(v: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += x;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}
