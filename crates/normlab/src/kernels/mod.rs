//! The hot loops: no I/O and no shapes beyond what a loop needs. With the
//! loops live the performance choices that belong to them: the sizes from
//! which work is split across threads ([`batch_norm::PAR_MIN`]), the next
//! run prefetched ([`PREFETCH_MIN_BYTES`]) or the output stored streaming
//! ([`stream::MIN_BYTES`]); the tile shapes; and each fast kernel's
//! `applies()`/`supported()`, which says for which types, targets and
//! shapes a layer should take it. Which layer calls what stays in `layers`.
//! The fast forms are tested against plainer references: the generic loops,
//! im2col with a matrix product, the triple-loop matrix product.

/// Compiles a function three times, for AVX-512, for AVX2 and for every
/// x86-64 CPU, and runs the version [`crate::isa::active`] names.
///
/// The plain loops of the kernels are left to LLVM to vectorize, which it
/// does only as wide as the code is compiled for: the same body under
/// `#[target_feature]` becomes 16-lane AVX-512 or 8-lane AVX2 code. Closures
/// in the body (a rayon task's) are compiled with the function's features;
/// a function the body calls is too where LLVM inlines it (small helpers
/// are `#[inline]`), else it runs as the portable build made it. On other
/// architectures only the portable body exists.
///
/// Takes a free function whose parameters are plain names and whose
/// generic parameters are types with one bound each, then, after a `;`,
/// constants: `fn f<T: Real; const K: usize>(x: &[T])`.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident
        $(<$($gen:ident: $bound:path),* $(; $(const $cgen:ident: $cty:ty),+)?>)?
        ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name$(<$($gen: $bound,)* $($(const $cgen: $cty),+)?>)?($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                $(#[$meta])*
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
                fn avx512$(<$($gen: $bound,)* $($(const $cgen: $cty),+)?>)?($($arg: $ty),*) $(-> $ret)? $body
                $(#[$meta])*
                #[target_feature(enable = "avx2,fma")]
                fn avx2$(<$($gen: $bound,)* $($(const $cgen: $cty),+)?>)?($($arg: $ty),*) $(-> $ret)? $body
                match $crate::isa::active() {
                    // SAFETY: active() names no level this CPU lacks
                    $crate::isa::Isa::Avx512 => {
                        return unsafe { avx512$(::<$($gen,)* $($($cgen),+)?>)?($($arg),*) }
                    }
                    // SAFETY: as above
                    $crate::isa::Isa::Avx2 => return unsafe { avx2$(::<$($gen,)* $($($cgen),+)?>)?($($arg),*) },
                    $crate::isa::Isa::Portable => {}
                }
            }
            $body
        }
    };
}
pub(crate) use multiversion;

pub mod activation;
pub mod batch_norm;
pub mod conv;
pub mod conv_bn_lanes;
pub mod conv_channels;
pub mod conv_direct;
pub mod conv_input_grad;
pub mod conv_lanes;
pub mod conv_planes;
pub mod gemm;
pub mod image_lanes;
pub mod lanes;
pub mod linear_packed;
pub mod pool;
pub mod sigmoid;
pub mod stats;
pub mod stream;
pub mod winograd;
pub mod winograd_grad;

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
    sum8(acc)
}

/// Asks the CPU to bring `v` into its L2 cache ahead of use (a hint: no
/// effect on results, nothing on targets without the instruction).
///
/// For a channel of an NCHW tensor, whose values are `N` runs of `H·W` far
/// apart, the hardware prefetcher starts over at every run; fetching run
/// `i + 1` while run `i` is summed made BN's backward at (64,64,56,56) 12%
/// faster (7.5 -> 6.7 ms, 2 threads).
#[inline]
pub fn prefetch<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let bytes = std::mem::size_of_val(v);
        let base = v.as_ptr() as *const i8;
        for offset in (0..bytes).step_by(64) {
            // SAFETY: the address lies inside v; a prefetch never faults
            unsafe { _mm_prefetch::<_MM_HINT_T1>(base.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Tensors from this size on (bytes) are beyond what the cores' caches
/// hold, and their strided reductions [`prefetch`] the next run.
pub const PREFETCH_MIN_BYTES: usize = 8 << 20;

pub use lanes::sum8;
pub use pool::{avg_pool_2x2, max_pool_2x2};

/// `dst += src` for short rows (LeNet's are 8 to 24 long): eight at a time
/// in fixed-size blocks, because the compiler's own vector loop only starts
/// at 32 elements and would leave such rows to a scalar loop.
#[inline(always)]
pub fn add_row<T: Real>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d8, s8) in (&mut d).zip(&mut s) {
        let (d8, s8): (&mut [T; 8], &[T; 8]) = (d8.try_into().unwrap(), s8.try_into().unwrap());
        for l in 0..8 {
            d8[l] += s8[l];
        }
    }
    for (x, &y) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *x += y;
    }
}

/// `dst = src` for short rows, eight at a time (see [`add_row`]); a
/// `copy_from_slice` of 8 values is a call to `memcpy`.
#[inline(always)]
pub fn copy_row<T: Real>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d8, s8) in (&mut d).zip(&mut s) {
        let s8: [T; 8] = s8.try_into().unwrap();
        d8.copy_from_slice(&s8);
    }
    d.into_remainder().copy_from_slice(s.remainder());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_rows_add_and_copy_every_element() {
        for len in [0, 1, 7, 8, 9, 12, 16, 24, 31] {
            let src: Vec<f32> = (0..len).map(|i| i as f32 + 0.5).collect();
            let mut dst: Vec<f32> = (0..len).map(|i| 100.0 * i as f32).collect();
            add_row(&mut dst, &src);
            assert!(dst.iter().enumerate().all(|(i, &v)| v == 101.0 * i as f32 + 0.5), "add {len}");
            copy_row(&mut dst, &src);
            assert_eq!(dst, src, "copy {len}");
        }
    }
}
