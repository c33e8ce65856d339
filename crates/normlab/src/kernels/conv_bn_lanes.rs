//! LeNet's first stage, `Conv2d(1, C, 5) -> BatchNorm2d -> Sigmoid ->
//! AvgPool2d(2, 2)`, with sixteen images in the lanes of a vector from the
//! input to the pooled output: the convolution of `conv_lanes`, then the
//! block of `layers::batch_norm::block`, its convolution output and that
//! output's gradient kept in lanes between the passes instead of being
//! transposed into planes and back.
//!
//! ```text
//! per group of 16 images (the layer runs groups in parallel):
//! forward  A: x into lanes; z = conv(x) + b; per channel Σ (z - k), Σ (z - k)²
//!          B: y = pool(sigmoid((z - mean)·scale + shift)), out of lanes
//!          (s = sigmoid(...) kept for C)
//! backward C: dy into lanes; dh = (dy/4)·s·(1 - s); per channel Σ dh, Σ dh·(z - mean)
//!          D: dz = a·dh + b·(z - mean) + k band by band; dw += dz·x; db += Σ dz
//! ```
//!
//! Why: laid out as planes, the stage read or wrote its 6 x 24x24 values
//! per image nine times per step (convolution, statistics, activation, the
//! gradient's two passes, the weight gradient), and the planes did not stay
//! in the cores' caches. Here a group's values stay in its storage (about
//! 0.5 MB, in the L2 of the core that runs it) and each pass reads them once.

use super::conv::ConvGeometry;
use super::conv_lanes;
use super::image_lanes::LANES;
use super::stats::ShiftedSums;
use crate::real::Real;

/// Whether the stage runs here: [`conv_lanes::applies`], and an output of
/// even height and width whose pooled plane is whole vectors (LeNet's
/// 24x24 -> 12x12).
pub fn applies<T: Real>(g: &ConvGeometry, cout: usize) -> bool {
    conv_lanes::applies::<T>(g, cout)
        && g.output_hw().is_some_and(|(ho, wo)| {
            ho.is_multiple_of(2) && wo.is_multiple_of(2) && ((ho / 2) * (wo / 2)).is_multiple_of(LANES)
        })
}

/// The values one group of 16 images keeps between the passes: the input
/// and the convolution's output and gradient in lanes, the pooled values
/// (or their gradient) in lanes, and a band for the weight gradient. A
/// multiple of 16, so groups cut from one aligned buffer stay aligned.
pub fn group_len(g: &ConvGeometry, cout: usize) -> usize {
    let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
    let p = ho * wo;
    conv_lanes::scratch_len(g, cout) + (2 * cout * p + cout * p / 4) * LANES
}

#[cfg(target_arch = "x86_64")]
/// The group's storage cut into its parts.
struct Parts<'a> {
    x: &'a mut [f32],
    z: &'a mut [f32],
    dh: &'a mut [f32],
    pooled: &'a mut [f32],
    band: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
fn parts<'a>(g: &ConvGeometry, cout: usize, storage: &'a mut [f32]) -> Parts<'a> {
    assert!(storage.len() >= group_len(g, cout), "conv_bn_lanes: group storage");
    let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
    let p = ho * wo;
    let (x, rest) = storage.split_at_mut(g.height * g.width * LANES);
    let (z, rest) = rest.split_at_mut(cout * p * LANES);
    let (dh, rest) = rest.split_at_mut(cout * p * LANES);
    let (pooled, band) = rest.split_at_mut(cout * p / 4 * LANES);
    Parts { x, z, dh, pooled, band }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::conv_lanes::avx512::{forward_band, Dims, GradSums, Lanes};
    use super::super::image_lanes::{from_lanes, to_lanes};
    use super::super::sigmoid::avx512::sigmoid_affine_v;
    use super::*;

    /// The 16 lanes of `v` added in f64, in lane order.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    fn lane_sum(v: __m512) -> f64 {
        let mut lanes = [0.0f32; LANES];
        // SAFETY: 16 values; AVX-512F is compiled in
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        super::super::lanes::sum_widened(&lanes)
    }

    /// The pooled sizes: (pooled width, pooled positions per channel).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    fn pooled(d: &Dims) -> (usize, usize) {
        (d.wo / 2, d.p() / 4)
    }

    /// Images in a group whose pooled planes (`cout` per image) fill `len`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    fn images_in(g: &ConvGeometry, cout: usize, len: usize) -> usize {
        let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
        len / (cout * (ho / 2) * (wo / 2))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn forward_conv(
        g: &ConvGeometry,
        weight: &[f32],
        bias: Option<&[f32]>,
        x: &[f32],
        storage: &mut [f32],
        sums: &mut [ShiftedSums],
    ) {
        let cout = weight.len() / 25;
        assert!(sums.is_empty() || sums.len() == cout, "conv_bn_lanes: one sum per channel, or none");
        let plane = g.height * g.width;
        let d = Dims::of(g, cout, x.len() / plane);
        assert!(x.len() == d.images * plane && weight.len() == cout * 25, "conv_bn_lanes: input or weight length");
        let Parts { x: xt, z, .. } = parts(g, cout, storage);
        to_lanes(x, d.images, plane, plane, xt);
        let p = d.p();
        for oh0 in (0..d.ho).step_by(d.band) {
            forward_band(&d, weight, bias, xt, oh0, Lanes { values: &mut *z, channel_stride: p, first: oh0 * d.wo });
            for (co, s) in sums.iter_mut().enumerate() {
                let band = &z[(co * p + oh0 * d.wo) * LANES..][..d.band_p * LANES];
                if d.images == LANES {
                    s.add(band);
                } else {
                    // only the lanes that hold images
                    band.chunks_exact(LANES).for_each(|v| s.add(&v[..d.images]));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn forward_pool(g: &ConvGeometry, coefs: &[(f32, f32, f32)], storage: &mut [f32], y: &mut [f32]) {
        let cout = coefs.len();
        let d = Dims::of(g, cout, images_in(g, cout, y.len()));
        let (pw, pp) = pooled(&d);
        assert_eq!(y.len(), d.images * cout * pp, "conv_bn_lanes: output length");
        // the sigmoid's values go where the backward pass turns them into dh
        let Parts { z, dh: s_out, pooled, .. } = parts(g, cout, storage);
        let p = d.p();
        for (co, &coef) in coefs.iter().enumerate() {
            for ph in 0..d.ho / 2 {
                for pc in 0..pw {
                    let at = |r: usize, c: usize| (co * p + (2 * ph + r) * d.wo + 2 * pc + c) * LANES;
                    // SAFETY: 16 values each (the slices below); AVX-512F is compiled in
                    unsafe {
                        let mut s = |r, c| {
                            let v = sigmoid_affine_v(_mm512_loadu_ps(z[at(r, c)..][..LANES].as_ptr()), coef);
                            _mm512_storeu_ps(s_out[at(r, c)..][..LANES].as_mut_ptr(), v);
                            v
                        };
                        let (s00, s01) = (s(0, 0), s(0, 1));
                        let (s10, s11) = (s(1, 0), s(1, 1));
                        let sum = _mm512_add_ps(_mm512_add_ps(s00, s01), _mm512_add_ps(s10, s11));
                        let out = &mut pooled[(co * pp + ph * pw + pc) * LANES..][..LANES];
                        _mm512_storeu_ps(out.as_mut_ptr(), _mm512_mul_ps(sum, _mm512_set1_ps(0.25)));
                    }
                }
            }
            from_lanes(&pooled[co * pp * LANES..][..pp * LANES], d.images, pp, &mut y[co * pp..], cout * pp);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn backward_sums(g: &ConvGeometry, mean: &[f32], dy: &[f32], storage: &mut [f32]) -> Vec<(f64, f64)> {
        let cout = mean.len();
        let d = Dims::of(g, cout, images_in(g, cout, dy.len()));
        let (pw, pp) = pooled(&d);
        assert_eq!(dy.len(), d.images * cout * pp, "conv_bn_lanes: gradient length");
        let Parts { z, dh, pooled, .. } = parts(g, cout, storage);
        for co in 0..cout {
            to_lanes(&dy[co * pp..], d.images, cout * pp, pp, &mut pooled[co * pp * LANES..][..pp * LANES]);
        }
        let p = d.p();
        let mut sums = Vec::with_capacity(cout);
        for (co, &mu) in mean.iter().enumerate() {
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for ph in 0..d.ho / 2 {
                for pc in 0..pw {
                    let g_in = &pooled[(co * pp + ph * pw + pc) * LANES..][..LANES];
                    // SAFETY: as above; g_in is 16 values
                    let quarter = unsafe { _mm512_mul_ps(_mm512_loadu_ps(g_in.as_ptr()), _mm512_set1_ps(0.25)) };
                    for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let at = (co * p + (2 * ph + r) * d.wo + 2 * pc + c) * LANES;
                        let out = &mut dh[at..][..LANES];
                        // SAFETY: as above; z[at..][..LANES] and out are 16 values each
                        unsafe {
                            let x = _mm512_loadu_ps(z[at..][..LANES].as_ptr());
                            // the forward pass's sigmoid, kept where dh goes
                            let s = _mm512_loadu_ps(out.as_ptr());
                            let v = _mm512_mul_ps(_mm512_mul_ps(quarter, s), _mm512_sub_ps(_mm512_set1_ps(1.0), s));
                            _mm512_storeu_ps(out.as_mut_ptr(), v);
                            a = _mm512_add_ps(a, v);
                            b = _mm512_add_ps(b, _mm512_mul_ps(v, _mm512_sub_ps(x, _mm512_set1_ps(mu))));
                        }
                    }
                }
            }
            sums.push((lane_sum(a), lane_sum(b)));
        }
        sums
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn backward_dz(
        g: &ConvGeometry,
        apply: &[(f32, f32, f32)],
        mean: &[f32],
        images: usize,
        storage: &mut [f32],
        out: DzOut,
    ) {
        let cout = apply.len();
        let d = Dims::of(g, cout, images);
        assert_eq!(mean.len(), cout, "conv_bn_lanes: one mean per channel");
        let Parts { x: xt, z, dh, band, .. } = parts(g, cout, storage);
        let p = d.p();
        let mut grad = GradSums::new(&d);
        let mut bias_sums = vec![_mm512_setzero_ps(); cout];
        let valid = ((1u32 << d.images) - 1) as __mmask16;
        let (mut dw, mut planes) = (None, None);
        match out {
            DzOut::WeightGrad { dw: w, db } => dw = Some((w, db)),
            DzOut::Planes(dz) => planes = Some(dz),
        }
        for oh0 in (0..d.ho).step_by(d.band) {
            for (co, (&(a, b, k), &mu)) in apply.iter().zip(mean).enumerate() {
                for q in 0..d.band_p {
                    let at = (co * p + oh0 * d.wo + q) * LANES;
                    let out = &mut band[(co * d.band_p + q) * LANES..][..LANES];
                    // SAFETY: 16 values each; AVX-512F is compiled in
                    unsafe {
                        let x = _mm512_loadu_ps(z[at..][..LANES].as_ptr());
                        let h = _mm512_loadu_ps(dh[at..][..LANES].as_ptr());
                        let v = _mm512_add_ps(
                            _mm512_add_ps(
                                _mm512_mul_ps(_mm512_set1_ps(a), h),
                                _mm512_mul_ps(_mm512_set1_ps(b), _mm512_sub_ps(x, _mm512_set1_ps(mu))),
                            ),
                            _mm512_set1_ps(k),
                        );
                        _mm512_storeu_ps(out.as_mut_ptr(), v);
                        bias_sums[co] = _mm512_add_ps(bias_sums[co], _mm512_maskz_mov_ps(valid, v));
                    }
                }
            }
            match planes.as_deref_mut() {
                Some(dz) => {
                    for co in 0..cout {
                        let lanes = &band[co * d.band_p * LANES..][..d.band_p * LANES];
                        from_lanes(lanes, d.images, d.band_p, &mut dz[co * p + oh0 * d.wo..], cout * p);
                    }
                }
                // x is zero in the lanes past the images, so their dz adds nothing
                None => grad.add_band(&d, xt, band, oh0),
            }
        }
        if let Some((dw, db)) = dw {
            grad.write(&d, dw);
            for (s, v) in db.iter_mut().zip(&bias_sums) {
                *s = lane_sum(*v);
            }
        }
    }
}

/// What [`backward_dz`] does with the convolution's output gradient.
pub enum DzOut<'a> {
    /// The group's weight gradient `dw` (overwritten, `[cout][5][5]`) and
    /// bias gradient `db` (overwritten, f64).
    WeightGrad { dw: &'a mut [f32], db: &'a mut [f64] },
    /// The gradient itself, as planes (`images·cout` of them), for a layer
    /// that also needs its input's gradient.
    Planes(&'a mut [f32]),
}

/// Pass A: `x` (up to 16 one-channel images) into lanes and its
/// convolution into the group's `storage` ([`group_len`] values, 64-byte
/// aligned), adding each channel's values to `sums` (one per channel, or
/// none where the statistics are not needed).
pub fn forward_conv(
    g: &ConvGeometry,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    storage: &mut [f32],
    sums: &mut [ShiftedSums],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::forward_conv(g, weight, bias, x, storage, sums) };
    }
    let _ = (g, weight, bias, x, storage, sums);
    unreachable!("conv_bn_lanes::applies() is false without AVX-512")
}

/// Pass B: the group's pooled planes `y = pool(sigmoid(h))` with
/// `h = (z - mean)·scale + shift` and `coefs[c] = (mean, scale, shift)`; the
/// sigmoid's values stay in the group's storage for the backward pass
/// (they cost more to recompute than to keep in the core's L2).
pub fn forward_pool(g: &ConvGeometry, coefs: &[(f32, f32, f32)], storage: &mut [f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::forward_pool(g, coefs, storage, y) };
    }
    let _ = (g, coefs, storage, y);
    unreachable!("conv_bn_lanes::applies() is false without AVX-512")
}

/// Pass C: from the pooled gradient `dy` and the sigmoid's values that
/// pass B kept, `dh` into the group's storage and per channel
/// `(Σ dh, Σ dh·(z - mean))`.
pub fn backward_sums(g: &ConvGeometry, mean: &[f32], dy: &[f32], storage: &mut [f32]) -> Vec<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::backward_sums(g, mean, dy, storage) };
    }
    let _ = (g, mean, dy, storage);
    unreachable!("conv_bn_lanes::applies() is false without AVX-512")
}

/// Pass D: `dz = a·dh + b·(z - mean) + k` with `apply[c] = (a, b, k)`, band
/// by band, into the weight and bias gradients or into planes (`out`).
pub fn backward_dz(
    g: &ConvGeometry,
    apply: &[(f32, f32, f32)],
    mean: &[f32],
    images: usize,
    storage: &mut [f32],
    out: DzOut,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::backward_dz(g, apply, mean, images, storage, out) };
    }
    let _ = (g, apply, mean, images, storage, out);
    unreachable!("conv_bn_lanes::applies() is false without AVX-512")
}
