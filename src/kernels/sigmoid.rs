//! The logistic sigmoid `s = 1 / (1 + exp(-h))` of a batch-normalized value
//! `h = (z - mean)·scale + shift`, the hot loop of the fused BN+sigmoid+pool
//! block (run twice per value and step: forward, and recomputed backward).
//!
//! [`sigmoid_affine`] is the portable definition. On x86-64 compiled with
//! AVX-512, f32 slices go through [`sigmoid_affine_f32`], which does the same
//! operations in the same order on 16 values at once and so returns bitwise
//! the same values (tested): left to itself LLVM used 8-lane vectors for
//! this loop, and the division alone took a third of its time.

use crate::real::Real;

/// `1 / (1 + exp(-x))` with [`Real::exp_fast`].
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_fast())
}

/// `out[i] = sigmoid((z[i] - mean)·scale + shift)`, one value at a time.
#[inline]
pub fn sigmoid_affine<T: Real>(z: &[T], (mean, scale, shift): (T, T, T), out: &mut [T]) {
    for (o, &x) in out.iter_mut().zip(z) {
        *o = sigmoid((x - mean) * scale + shift);
    }
}

/// [`sigmoid_affine`] for f32, 16 values per instruction where the target
/// has AVX-512F; bitwise the same results.
#[inline]
pub fn sigmoid_affine_f32(z: &[f32], coef: (f32, f32, f32), out: &mut [f32]) {
    assert_eq!(z.len(), out.len(), "sigmoid_affine_f32: input and output lengths differ");
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "fma"))]
    {
        let (zc, zr) = z.as_chunks::<16>();
        let (oc, or) = out.as_chunks_mut::<16>();
        for (o, x) in oc.iter_mut().zip(zc) {
            *o = avx512::sigmoid_affine16(x, coef);
        }
        sigmoid_affine(zr, coef, or);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "fma")))]
    sigmoid_affine(z, coef, out);
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f", target_feature = "fma"))]
mod avx512 {
    use std::arch::x86_64::*;

    /// [`crate::real::exp_f32`] and the sigmoid around it, step for step.
    #[inline(always)]
    pub fn sigmoid_affine16(z: &[f32; 16], (mean, scale, shift): (f32, f32, f32)) -> [f32; 16] {
        // SAFETY (every intrinsic here): this module is compiled only where
        // the target has AVX-512F and FMA; z and out are 16 values each
        unsafe {
            let x = _mm512_loadu_ps(z.as_ptr());
            let h = _mm512_add_ps(
                _mm512_mul_ps(_mm512_sub_ps(x, _mm512_set1_ps(mean)), _mm512_set1_ps(scale)),
                _mm512_set1_ps(shift),
            );
            // exp(-h); negation flips the sign bit, as scalar `-x` does
            let x = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(h), _mm512_set1_epi32(i32::MIN)));
            // clamp(-87, 88) letting NaN through: max/min return their
            // second operand when either is NaN
            let x = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(_mm512_set1_ps(-87.0), x));
            let n = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(0.5));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(n);
            let r = _mm512_sub_ps(
                _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(LN2_HI))),
                _mm512_mul_ps(n, _mm512_set1_ps(LN2_LO)),
            );
            let mut p = _mm512_set1_ps(P[0]);
            for &coef in &P[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
            }
            let er = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
            let shifter = _mm512_set1_ps(SHIFTER);
            let n_bits = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(n, shifter)), _mm512_castps_si512(shifter));
            let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n_bits, _mm512_set1_epi32(127))));
            let e = _mm512_mul_ps(er, two_n);
            let one = _mm512_set1_ps(1.0);
            let s = _mm512_div_ps(one, _mm512_add_ps(one, e));
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(out.as_mut_ptr(), s);
            out
        }
    }

    use crate::real::exp_consts::{LN2_HI, LN2_LO, P, SHIFTER};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_wide_is_bitwise_the_scalar_definition() {
        let mut z: Vec<f32> = (0..4099).map(|i| ((i * 7919) % 4001) as f32 / 20.0 - 100.0).collect();
        z.extend([0.0, -0.0, 87.5, -87.5, 200.0, -200.0, f32::INFINITY, f32::NEG_INFINITY, 1e-40, -1e-40, f32::NAN]);
        for coef in [(0.0, 1.0, 0.0), (1.5, 0.37, -0.2), (-3.0, 12.0, 4.0)] {
            let (mut fast, mut plain) = (vec![0.0f32; z.len()], vec![0.0f32; z.len()]);
            sigmoid_affine_f32(&z, coef, &mut fast);
            sigmoid_affine(&z, coef, &mut plain);
            for (i, (a, b)) in fast.iter().zip(&plain).enumerate() {
                assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "z = {}, {coef:?}: {a} vs {b}", z[i]);
            }
            assert!(fast.last().unwrap().is_nan(), "NaN in, NaN out");
        }
    }
}
