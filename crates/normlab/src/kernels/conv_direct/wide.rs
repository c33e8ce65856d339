// The AVX-512 tiles of the direct convolution (see `wide` in
// `conv_direct.rs`): LeNet's second layer, two output rows per vector.

use super::ConvGeometry;
use crate::real::Real;

const CB: usize = 8;
const R: usize = 4;
const K: usize = 5;

pub fn applies<T: Real>(g: &ConvGeometry, cout: usize) -> bool {
    crate::isa::avx512()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.kernel == K
        && g.stride == 1
        && g.padding == 0
        && cout.is_multiple_of(CB)
        && g.output_hw().is_some_and(|(ho, wo)| wo == 8 && ho.is_multiple_of(R))
}

/// `packed` is `pack_weights_blocked` with `cb = 8` (the 8x2 tile's).
/// Panics unless [`applies`] (AVX-512 only).
pub fn forward_8x4(g: &ConvGeometry, cout: usize, packed: &[f32], bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { forward_8x4_avx512(g, cout, packed, bias, x, y) };
    }
    let _ = (g, cout, packed, bias, x, y);
    unreachable!("applies() is false without AVX-512")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
fn forward_8x4_avx512(g: &ConvGeometry, cout: usize, packed: &[f32], bias: Option<&[f32]>, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    assert!(x.len() == cin * h * w && y.len() == cout * ho * wo && packed.len() == cout * cin * K * K);
    let (xp, wp) = (x.as_ptr(), packed.as_ptr());
    for (b, co0) in (0..cout).step_by(CB).enumerate() {
        for oh in (0..ho).step_by(R) {
            let mut acc = [[_mm512_setzero_ps(); 2]; CB];
            for ci in 0..cin {
                for i in 0..K {
                    for j in 0..K {
                        // SAFETY: rows oh + i .. oh + i + 3 < h and columns
                        // j .. j + 8 ≤ w (wo = 8 = w - K + 1); the packed
                        // block of 8 weights lies inside packed (asserted sizes)
                        unsafe {
                            let row = |r: usize| xp.add((ci * h + oh + r + i) * w + j);
                            let lo = _mm512_castps256_ps512(_mm256_loadu_ps(row(0)));
                            let rows01 = _mm512_insertf32x8::<1>(lo, _mm256_loadu_ps(row(1)));
                            let lo = _mm512_castps256_ps512(_mm256_loadu_ps(row(2)));
                            let rows23 = _mm512_insertf32x8::<1>(lo, _mm256_loadu_ps(row(3)));
                            let ws = wp.add((((b * cin + ci) * K + i) * K + j) * CB);
                            for (c, a) in acc.iter_mut().enumerate() {
                                let wb = _mm512_set1_ps(*ws.add(c));
                                a[0] = _mm512_fmadd_ps(wb, rows01, a[0]);
                                a[1] = _mm512_fmadd_ps(wb, rows23, a[1]);
                            }
                        }
                    }
                }
            }
            for (c, a) in acc.iter().enumerate() {
                let bias = bias.map_or(0.0, |b| b[co0 + c]);
                for (half, &v) in a.iter().enumerate() {
                    let out = &mut y[((co0 + c) * ho + oh + 2 * half) * wo..][..2 * wo];
                    // SAFETY: out holds the 16 values of two output rows
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(v, _mm512_set1_ps(bias))) };
                }
            }
        }
    }
}

/// Whether [`weight_grad_16`] takes [`super::weight_grad_by_channels`]'s
/// work: f32 on AVX-512, kernel 5, 9 to 16 output channels (one 16-lane
/// vector where the portable kernel uses two of 8).
pub fn weight_grad_applies<T: Real>(g: &ConvGeometry, cout: usize) -> bool {
    crate::isa::avx512()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.kernel == K
        && (9..=16).contains(&cout)
}

/// `weight_grad_by_channels_cv`'s sums with the 16 channels in one vector
/// and one input channel's 25 taps per block (25 accumulators): each
/// position loads its 16 gradients once and broadcasts 25 inputs, which
/// lie in 5 rows at fixed offsets. Products and additions in the same
/// order as the 8-lane kernel, so bitwise the same (tested). `dy_t` holds
/// 16 values per position. Panics unless [`weight_grad_applies`] (AVX-512 only).
pub fn weight_grad_16(g: &ConvGeometry, cout: usize, x: &[f32], dy_t: &[f32], dw: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { weight_grad_16_avx512(g, cout, x, dy_t, dw) };
    }
    let _ = (g, cout, x, dy_t, dw);
    unreachable!("weight_grad_applies() is false without AVX-512")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
fn weight_grad_16_avx512(g: &ConvGeometry, cout: usize, x: &[f32], dy_t: &[f32], dw: &mut [f32]) {
    use std::arch::x86_64::*;
    let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    let (p, x_len, taps) = (ho * wo, cin * h * w, cin * K * K);
    let images = x.len() / x_len;
    assert!(dy_t.len() >= images * p * 16 && dw.len() == cout * taps, "weight_grad_16: shapes");
    for ci in 0..cin {
        let mut acc = [_mm512_setzero_ps(); K * K];
        for n in 0..images {
            for oh in 0..ho {
                // a plain loop, not array::from_fn, whose closure would stay a
                // call: from_fn is compiled without this kernel's features
                let mut rows: [&[f32]; K] = [&[]; K];
                for (i, row) in rows.iter_mut().enumerate() {
                    *row = &x[n * x_len + (ci * h + oh + i) * w..][..w];
                }
                let d_row = &dy_t[(n * p + oh * wo) * 16..][..wo * 16];
                for ow in 0..wo {
                    // SAFETY: ow + j < wo + K - 1 = w, and 16 values per position
                    unsafe {
                        // each input value straight from memory into its
                        // multiply-add: carried over from the previous
                        // position in registers, they spilled the accumulators
                        super::separate_loads();
                        let d = _mm512_loadu_ps(d_row.as_ptr().add(ow * 16));
                        for i in 0..K {
                            for j in 0..K {
                                let xv = _mm512_set1_ps(*rows[i].get_unchecked(ow + j));
                                acc[i * K + j] = _mm512_fmadd_ps(d, xv, acc[i * K + j]);
                            }
                        }
                    }
                }
            }
        }
        let mut lanes = [0.0f32; 16];
        for (t, a) in acc.iter().enumerate() {
            // SAFETY: lanes holds 16 values
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *a) };
            for (co, &v) in lanes.iter().enumerate().take(cout) {
                dw[co * taps + ci * K * K + t] = v;
            }
        }
    }
}
