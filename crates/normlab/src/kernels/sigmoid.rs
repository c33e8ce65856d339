//! The logistic sigmoid `s = 1 / (1 + exp(-h))` of a batch-normalized value
//! `h = (z - mean)·scale + shift`, the hot loop of the fused BN+sigmoid+pool
//! block (run twice per value and step: forward, and recomputed backward).
//!
//! [`sigmoid_affine`] is the portable definition. On x86-64 compiled with
//! AVX-512, f32 slices go through [`sigmoid_affine_f32`], which does the same
//! operations in the same order on 16 values at once and so returns bitwise
//! the same values (tested): left to itself LLVM used 8-lane vectors for
//! this loop, and the division alone took a third of its time.
//!
//! [`pooled_sigmoid_grad`] is the block's backward for one plane in one
//! sweep: the sigmoid recomputed, its slope times the pooled gradient, and
//! batch norm's two sums (once three sweeps: block backward at
//! (128,6,24,24), 2 threads, 0.30 -> 0.21-0.25 ms).

use super::lanes::sum16;
use super::stream::MapF32;
use crate::real::{as_f32, as_f32_mut, mul_add, Real};

/// `1 / (1 + exp(-x))` with [`Real::exp_fast`].
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp_fast())
}

multiversion! {
    /// `out[i] = sigmoid((z[i] - mean)·scale + shift)`, one value at a time.
    #[inline]
    pub fn sigmoid_affine<T: Real>(z: &[T], coef: (T, T, T), out: &mut [T]) {
        let (mean, scale, shift) = coef;
        for (o, &x) in out.iter_mut().zip(z) {
            *o = sigmoid(mul_add(x - mean, scale, shift));
        }
    }
}

/// [`sigmoid_affine`] for f32, 16 values per instruction with AVX-512F and
/// 8 with AVX2; bitwise the same results.
#[inline]
pub fn sigmoid_affine_f32(z: &[f32], coef: (f32, f32, f32), out: &mut [f32]) {
    assert_eq!(z.len(), out.len(), "sigmoid_affine_f32: input and output lengths differ");
    #[cfg(target_arch = "x86_64")]
    match crate::isa::active() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        crate::isa::Isa::Avx512 => return unsafe { avx512::sigmoid_affine(z, coef, out) },
        // SAFETY: the CPU has AVX2 and FMA (isa::active checked it)
        crate::isa::Isa::Avx2 => return unsafe { avx2::sigmoid_affine(z, coef, out) },
        crate::isa::Isa::Portable => {}
    }
    sigmoid_affine(z, coef, out);
}

/// [`sigmoid_affine`] for any [`Real`]: f32 through its 16-wide form
/// ([`sigmoid_affine_f32`]), f64 through the portable one. The layers call
/// this; the choice is by type, so `Real` needs no method for it.
#[inline]
pub fn sigmoid_affine_fast<T: Real>(z: &[T], coef: (T, T, T), out: &mut [T]) {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        sigmoid_affine_f32(as_f32(z), coef.map_f32(), as_f32_mut(out))
    } else {
        sigmoid_affine(z, coef, out)
    }
}

/// [`pooled_sigmoid_grad`] for any [`Real`]: f32 through
/// [`pooled_sigmoid_grad_f32`], f64 through the portable form.
#[inline]
pub fn pooled_sigmoid_grad_fast<T: Real>(plane: &PooledPlane<T>, dh: &mut [T], spread: &mut [T]) -> (f64, f64) {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        let f32_plane = PooledPlane {
            z: as_f32(plane.z),
            g: as_f32(plane.g),
            width: plane.width,
            coef: plane.coef.map_f32(),
            mu: plane.mu.as_f64() as f32,
        };
        pooled_sigmoid_grad_f32(&f32_plane, as_f32_mut(dh), as_f32_mut(spread))
    } else {
        pooled_sigmoid_grad(plane, dh, spread)
    }
}

/// One plane's inputs to [`pooled_sigmoid_grad`]: the block's input `z`
/// (`width` wide, an even number), the pooled gradient `g`, the forward's
/// `(mean, scale, shift)` and the mean `mu` the sums center on.
#[derive(Clone, Copy)]
pub struct PooledPlane<'a, T> {
    pub z: &'a [T],
    pub g: &'a [T],
    pub width: usize,
    pub coef: (T, T, T),
    pub mu: T,
}

multiversion! {
    /// The gradient through sigmoid and 2x2 average pooling, for one plane `w`
    /// wide, with the two sums batch norm's backward needs, in one sweep:
    ///
    /// ```text
    /// s  = sigmoid((z - mean)·scale + shift)           (the forward's values)
    /// dh = (g[r/2][c/2] / 4) · s · (1 - s)
    /// returns (Σ dh, Σ dh·(z - mu))
    /// ```
    ///
    /// `g` is the pooled gradient (`w/2` per row), `spread` scratch of `2w`;
    /// panics if the lengths do not fit. The sums run in 16 lanes over each pair
    /// of rows (value `k` of a pair in lane `k % 16`), then across the lanes, so
    /// the 16-wide form gives bitwise the same results.
    pub fn pooled_sigmoid_grad<T: Real>(plane: &PooledPlane<T>, dh: &mut [T], spread: &mut [T]) -> (f64, f64) {
        let &PooledPlane { z, g, width: w, coef: (mean, scale, shift), mu } = plane;
        let (mut a, mut b) = ([T::zero(); 16], [T::zero(); 16]);
        let pair = 2 * w;
        assert!(z.len() == dh.len() && z.len() == 4 * g.len() && spread.len() >= pair && w.is_multiple_of(2));
        for ((g_row, z_pair), dh_pair) in g.chunks_exact(w / 2).zip(z.chunks_exact(pair)).zip(dh.chunks_exact_mut(pair)) {
            spread_row_pair(g_row, &mut spread[..pair]);
            for ((d16, z16), s16) in dh_pair.chunks_mut(16).zip(z_pair.chunks(16)).zip(spread.chunks(16)) {
                for (l, ((d, &x), &gv)) in d16.iter_mut().zip(z16).zip(s16).enumerate() {
                    let s = sigmoid(mul_add(x - mean, scale, shift));
                    *d = gv * s * (T::one() - s);
                    a[l] += *d;
                    b[l] += *d * (x - mu);
                }
            }
        }
        (sum16(&a), sum16(&b))
    }
}

/// [`pooled_sigmoid_grad`] for f32, 16 values per instruction with
/// AVX-512F and 8 with AVX2; bitwise the same results.
#[inline]
pub fn pooled_sigmoid_grad_f32(plane: &PooledPlane<f32>, dh: &mut [f32], spread: &mut [f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        let sums = match crate::isa::active() {
            // SAFETY: the CPU has AVX-512 (isa::active checked it)
            crate::isa::Isa::Avx512 => Some(unsafe { avx512::pooled_sigmoid_grad(plane, dh, spread) }),
            // SAFETY: the CPU has AVX2 and FMA (isa::active checked it)
            crate::isa::Isa::Avx2 => Some(unsafe { avx2::pooled_sigmoid_grad(plane, dh, spread) }),
            crate::isa::Isa::Portable => None,
        };
        if let Some((a, b)) = sums {
            return (sum16(&a), sum16(&b));
        }
    }
    pooled_sigmoid_grad(plane, dh, spread)
}

/// `g / 4` spread over both rows of its 2x2 windows: `spread[r·w + c] = g[c/2] / 4`
/// for `r` in 0..2 (`spread` is `2w` long).
#[inline]
fn spread_row_pair<T: Real>(g_row: &[T], spread: &mut [T]) {
    let quarter = T::from_f64(0.25);
    let w = spread.len() / 2;
    for (pair, &gv) in spread[..w].chunks_exact_mut(2).zip(g_row) {
        pair[0] = gv * quarter;
        pair[1] = gv * quarter;
    }
    spread.copy_within(..w, w);
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`super::sigmoid_affine`] 16 values at a time, the rest one by one.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn sigmoid_affine(z: &[f32], coef: (f32, f32, f32), out: &mut [f32]) {
        let (zc, zr) = z.as_chunks::<16>();
        let (oc, or) = out.as_chunks_mut::<16>();
        for (o, x) in oc.iter_mut().zip(zc) {
            *o = sigmoid_affine16(x, coef);
        }
        super::sigmoid_affine(zr, coef, or);
    }

    /// [`crate::real::exp_f32`] and the sigmoid around it, step for step.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn sigmoid_affine16(z: &[f32; 16], coef: (f32, f32, f32)) -> [f32; 16] {
        let mut out = [0.0f32; 16];
        // SAFETY: this module is compiled only where the target has
        // AVX-512F and FMA; z and out are 16 values each
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sigmoid_affine_v(_mm512_loadu_ps(z.as_ptr()), coef)) };
        out
    }

    /// The same on a vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn sigmoid_affine_v(x: __m512, (mean, scale, shift): (f32, f32, f32)) -> __m512 {
        // -h = (x - mean)·(-scale) - shift, the negation of the
        // portable form's multiply-add
        let x = _mm512_fmadd_ps(_mm512_sub_ps(x, _mm512_set1_ps(mean)), _mm512_set1_ps(-scale), _mm512_set1_ps(-shift));
        // clamp(-87, 88) letting NaN through: max/min return their
        // second operand when either is NaN
        let x = _mm512_min_ps(_mm512_set1_ps(88.0), _mm512_max_ps(_mm512_set1_ps(-87.0), x));
        let n = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(0.5));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(n);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x));
        let mut p = _mm512_set1_ps(P[0]);
        for &coef in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
        }
        let one = _mm512_set1_ps(1.0);
        let er = _mm512_fmadd_ps(_mm512_fmadd_ps(p, r, one), r, one);
        // er·2^n in one instruction; n stays within -126..127 (the
        // clamp), where this is exactly the portable form's product
        let e = _mm512_scalef_ps(er, n);
        _mm512_div_ps(one, _mm512_add_ps(one, e))
    }

    /// [`super::pooled_sigmoid_grad`] on 16 values at a time, the tail of
    /// each row pair masked; the same operations in the same order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn pooled_sigmoid_grad(plane: &PooledPlane<f32>, dh: &mut [f32], spread: &mut [f32]) -> ([f32; 16], [f32; 16]) {
        let &PooledPlane { z, g, width: w, coef, mu } = plane;
        let pair = 2 * w;
        assert!(z.len() == dh.len() && z.len() == 4 * g.len() && spread.len() >= pair && w.is_multiple_of(2));
        let (full, rest) = (pair / 16, pair % 16);
        // SAFETY (every intrinsic here): compiled only with AVX-512F and FMA;
        // the loads and stores stay inside this row pair's 2w values (the
        // last, partial one masked), which the chunks below bound
        unsafe {
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let one = _mm512_set1_ps(1.0);
            let step =
                |zp: *const f32, sp: *const f32, dp: *mut f32, lanes: __mmask16, a: &mut __m512, b: &mut __m512| {
                    let x = _mm512_maskz_loadu_ps(lanes, zp);
                    let s = sigmoid_affine_v(x, coef);
                    let d = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, sp), s), _mm512_sub_ps(one, s));
                    _mm512_mask_storeu_ps(dp, lanes, d);
                    *a = _mm512_mask_add_ps(*a, lanes, *a, d);
                    *b = _mm512_mask_add_ps(*b, lanes, *b, _mm512_mul_ps(d, _mm512_sub_ps(x, _mm512_set1_ps(mu))));
                };
            for ((g_row, z_pair), dh_pair) in
                g.chunks_exact(w / 2).zip(z.chunks_exact(pair)).zip(dh.chunks_exact_mut(pair))
            {
                super::spread_row_pair(g_row, &mut spread[..pair]);
                let (zp, sp, dp) = (z_pair.as_ptr(), spread.as_ptr(), dh_pair.as_mut_ptr());
                for k in 0..full {
                    step(zp.add(16 * k), sp.add(16 * k), dp.add(16 * k), 0xffff, &mut a, &mut b);
                }
                if rest > 0 {
                    let lanes = ((1u32 << rest) - 1) as __mmask16;
                    step(zp.add(16 * full), sp.add(16 * full), dp.add(16 * full), lanes, &mut a, &mut b);
                }
            }
            let (mut sa, mut sb) = ([0.0f32; 16], [0.0f32; 16]);
            _mm512_storeu_ps(sa.as_mut_ptr(), a);
            _mm512_storeu_ps(sb.as_mut_ptr(), b);
            (sa, sb)
        }
    }

    use super::PooledPlane;
    use crate::real::exp_consts::{LN2_HI, LN2_LO, P};
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! The AVX-512 forms' operations on 8 lanes. Without `scalef`, `2^n` is
    //! built from n's bits as the portable [`crate::real::exp_f32`] builds it.
    use std::arch::x86_64::*;

    use super::PooledPlane;
    use crate::real::exp_consts::{LN2_HI, LN2_LO, P, SHIFTER};

    /// [`super::sigmoid_affine`] 8 values at a time, the rest one by one.
    #[target_feature(enable = "avx2,fma")]
    pub fn sigmoid_affine(z: &[f32], coef: (f32, f32, f32), out: &mut [f32]) {
        let (zc, zr) = z.as_chunks::<8>();
        let (oc, or) = out.as_chunks_mut::<8>();
        for (o, x) in oc.iter_mut().zip(zc) {
            // SAFETY: 8 values each side; AVX2 and FMA are compiled in
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), sigmoid_affine_v(_mm256_loadu_ps(x.as_ptr()), coef)) };
        }
        super::sigmoid_affine(zr, coef, or);
    }

    /// `sigmoid((x - mean)·scale + shift)` on a vector, step for step the
    /// portable form.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn sigmoid_affine_v(x: __m256, (mean, scale, shift): (f32, f32, f32)) -> __m256 {
        // -h = (x - mean)·(-scale) - shift, as in the AVX-512 form
        let x = _mm256_fmadd_ps(_mm256_sub_ps(x, _mm256_set1_ps(mean)), _mm256_set1_ps(-scale), _mm256_set1_ps(-shift));
        // clamp(-87, 88) letting NaN through (max/min return their second
        // operand when either is NaN)
        let x = _mm256_min_ps(_mm256_set1_ps(88.0), _mm256_max_ps(_mm256_set1_ps(-87.0), x));
        let n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), _mm256_set1_ps(0.5)));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x));
        let mut p = _mm256_set1_ps(P[0]);
        for &coef in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(coef));
        }
        let one = _mm256_set1_ps(1.0);
        let er = _mm256_fmadd_ps(_mm256_fmadd_ps(p, r, one), r, one);
        // 2^n: n + 1.5·2^23 holds n in its low mantissa bits
        let shifter = _mm256_set1_ps(SHIFTER);
        let n_bits = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(n, shifter)), _mm256_castps_si256(shifter));
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n_bits, _mm256_set1_epi32(127))));
        _mm256_div_ps(one, _mm256_add_ps(one, _mm256_mul_ps(er, two_n)))
    }

    /// [`super::pooled_sigmoid_grad`] on 8 values at a time: each 16-value
    /// chunk of a row pair is two vectors, lanes 0-7 and 8-15 of the portable
    /// form's sums, and the tail is masked; the same operations in the same
    /// order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn pooled_sigmoid_grad(plane: &PooledPlane<f32>, dh: &mut [f32], spread: &mut [f32]) -> ([f32; 16], [f32; 16]) {
        let &PooledPlane { z, g, width: w, coef, mu } = plane;
        let pair = 2 * w;
        assert!(z.len() == dh.len() && z.len() == 4 * g.len() && spread.len() >= pair && w.is_multiple_of(2));
        let (full, rest) = (pair / 8, pair % 8);
        let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // SAFETY (every intrinsic here): compiled only with AVX2 and FMA; the
        // loads and stores stay inside this row pair's 2w values (the last,
        // partial one masked), which the chunks below bound
        unsafe {
            // sums of lanes 0-7 and 8-15 of each 16-value chunk
            let mut sums = [[_mm256_setzero_ps(); 2]; 2];
            let one = _mm256_set1_ps(1.0);
            let step = |zp: *const f32, sp: *const f32, dp: *mut f32, mask: __m256i, half: &mut [__m256; 2]| {
                let x = _mm256_maskload_ps(zp, mask);
                let s = sigmoid_affine_v(x, coef);
                let d = _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(sp, mask), s), _mm256_sub_ps(one, s));
                _mm256_maskstore_ps(dp, mask, d);
                let keep = _mm256_castsi256_ps(mask);
                half[0] = _mm256_blendv_ps(half[0], _mm256_add_ps(half[0], d), keep);
                let db = _mm256_mul_ps(d, _mm256_sub_ps(x, _mm256_set1_ps(mu)));
                half[1] = _mm256_blendv_ps(half[1], _mm256_add_ps(half[1], db), keep);
            };
            for ((g_row, z_pair), dh_pair) in
                g.chunks_exact(w / 2).zip(z.chunks_exact(pair)).zip(dh.chunks_exact_mut(pair))
            {
                super::spread_row_pair(g_row, &mut spread[..pair]);
                let (zp, sp, dp) = (z_pair.as_ptr(), spread.as_ptr(), dh_pair.as_mut_ptr());
                let all = _mm256_set1_epi32(-1);
                for k in 0..full {
                    step(zp.add(8 * k), sp.add(8 * k), dp.add(8 * k), all, &mut sums[k % 2]);
                }
                if rest > 0 {
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(rest as i32), lane_index);
                    step(zp.add(8 * full), sp.add(8 * full), dp.add(8 * full), mask, &mut sums[full % 2]);
                }
            }
            let (mut sa, mut sb) = ([0.0f32; 16], [0.0f32; 16]);
            for (half, v) in sums.iter().enumerate() {
                _mm256_storeu_ps(sa.as_mut_ptr().add(8 * half), v[0]);
                _mm256_storeu_ps(sb.as_mut_ptr().add(8 * half), v[1]);
            }
            (sa, sb)
        }
    }
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

    /// The 16-wide pooled gradient is bitwise the portable one: `dh` and both
    /// sums, for rows whose pairs are whole vectors (8, 24 wide) and not (10, 6).
    #[test]
    fn pooled_grad_sixteen_wide_is_bitwise_the_portable_one() {
        for (h, w) in [(24, 24), (8, 8), (4, 10), (6, 6)] {
            let z: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 401) as f32 / 40.0 - 5.0).collect();
            let g: Vec<f32> = (0..h * w / 4).map(|i| ((i * 104_729) % 97) as f32 / 10.0 - 4.8).collect();
            let coef = (0.3, 1.7, -0.4);
            let (mut fast, mut plain, mut spread) = (vec![f32::NAN; h * w], vec![f32::NAN; h * w], vec![0.0; 2 * w]);
            let plane = PooledPlane { z: &z, g: &g, width: w, coef, mu: 0.25 };
            let fast_sums = pooled_sigmoid_grad_f32(&plane, &mut fast, &mut spread);
            let plain_sums = pooled_sigmoid_grad(&plane, &mut plain, &mut spread);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&plain), "{h}x{w}");
            assert_eq!(fast_sums.0.to_bits(), plain_sums.0.to_bits(), "{h}x{w}: sum of dh");
            assert_eq!(fast_sums.1.to_bits(), plain_sums.1.to_bits(), "{h}x{w}: sum of dh·(z - mu)");
            // against the definition, value by value and summed in f64
            let (mut sa, mut sb) = (0.0f64, 0.0f64);
            for (k, &d) in plain.iter().enumerate() {
                let (r, c) = (k / w, k % w);
                let s = sigmoid((z[k] - coef.0) * coef.1 + coef.2) as f64;
                let want = g[(r / 2) * (w / 2) + c / 2] as f64 / 4.0 * s * (1.0 - s);
                assert!((d as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{h}x{w} value {k}: {d} vs {want}");
                sa += want;
                sb += want * (z[k] as f64 - 0.25);
            }
            assert!((plain_sums.0 - sa).abs() <= 1e-4 * (1.0 + sa.abs()), "{h}x{w}: {} vs {sa}", plain_sums.0);
            assert!((plain_sums.1 - sb).abs() <= 1e-4 * (1.0 + sb.abs()), "{h}x{w}: {} vs {sb}", plain_sums.1);
        }
    }
}
