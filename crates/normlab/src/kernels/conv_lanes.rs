//! A convolution with one input channel and a 5x5 kernel (LeNet's first
//! layer), stride 1, no padding, computed with sixteen images in the
//! sixteen lanes of an AVX-512 vector:
//!
//! ```text
//! forward:          z[n][co][oh][ow] = Σ_{i,j} w[co][i][j] · x[n][oh+i][ow+j]  + b[co]
//! weight gradient:  dw[co][i][j] = Σ_n Σ_{oh,ow} dz[n][co][oh][ow] · x[n][oh+i][ow+j]
//! ```
//!
//! Why lanes: laid out as planes, a 24-wide output row fills one and a half
//! 16-wide vectors, and `conv_direct`'s 8-wide tiles ran at 40% of the
//! multiply-add peak. With the same position of 16 images in one vector,
//! every multiply-add is full width and a tile of 3 positions × 6 channels
//! reuses each input vector 6 times per tap. One thread, 16 images in
//! cache: forward 35 -> 12.7 µs, weight gradient 36 -> 17.1 µs.
//!
//! The images go into lanes once per call (the input, 16 x 784 values) and
//! one band of output rows at a time (the outputs, or their gradient), so
//! the lane-layout band stays in L1 between the kernel and the transposition.

use super::conv::ConvGeometry;
use super::image_lanes::{self, LANES};
use crate::real::Real;

/// Images per call: one per lane.
pub const IMAGES: usize = LANES;
/// Kernel size.
const K: usize = 5;
/// Output columns per forward tile (3 positions × up to 8 channels = 24
/// accumulators, plus the 7 input vectors a row of taps reads).
const TILE: usize = 3;
#[cfg(target_arch = "x86_64")]
/// Output channels per weight-gradient block (3 × 5 taps = 15 accumulators).
const BLOCK: usize = 3;
/// At most this many output channels.
pub const MAX_CHANNELS: usize = 8;

/// Output rows per band: the fewest whose positions fill whole vectors.
fn band_rows(wo: usize) -> usize {
    LANES / gcd(wo, LANES)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether these kernels handle the convolution: f32 on AVX-512, one input
/// channel, 5x5, stride 1, no padding, 1 to 8 output channels, an output at
/// least 3 wide whose bands of whole vectors (at most 64 positions) tile its
/// height, and an input plane of whole vectors. LeNet's first layer (28x28
/// -> 6 x 24x24, bands of 2 rows) qualifies.
pub fn applies<T: Real>(g: &ConvGeometry, cout: usize) -> bool {
    let Some((ho, wo)) = g.output_hw() else { return false };
    let band = band_rows(wo);
    image_lanes::applies::<T>(g.height * g.width)
        && g.channels == 1
        && g.kernel == K
        && g.stride == 1
        && g.padding == 0
        && (1..=MAX_CHANNELS).contains(&cout)
        && wo >= TILE
        && ho.is_multiple_of(band)
        && band * wo <= 64
}

/// Scratch values one call needs: the images' input in lanes, then one band
/// of outputs in lanes. A multiple of 16, so consecutive scratch areas cut
/// from one 64-byte-aligned buffer (the library's private `AlignedVec`)
/// all stay 64-byte aligned.
pub fn scratch_len(g: &ConvGeometry, cout: usize) -> usize {
    let (_, wo) = g.output_hw().expect("applies() checked the geometry");
    (g.height * g.width + cout * band_rows(wo) * wo) * LANES
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// The sizes every kernel here works with.
    pub struct Dims {
        /// input width
        pub w: usize,
        pub ho: usize,
        pub wo: usize,
        /// output rows per band, and positions per band
        pub band: usize,
        pub band_p: usize,
        pub cout: usize,
        /// images in this call (lanes past them are zeros)
        pub images: usize,
    }

    impl Dims {
        /// Checks every slice against the geometry; the kernels below index
        /// inside these sizes only.
        pub fn new(g: &ConvGeometry, cout: usize, x: usize, w_len: usize, z: usize, scratch: usize) -> Dims {
            let d = Dims::of(g, cout, x / (g.height * g.width));
            assert!(
                x == d.images * g.height * g.width
                    && z == d.images * cout * d.p()
                    && w_len == cout * K * K
                    && scratch >= scratch_len(g, cout),
                "conv_lanes: slice lengths"
            );
            d
        }

        /// The sizes of `images` images through this convolution.
        pub fn of(g: &ConvGeometry, cout: usize, images: usize) -> Dims {
            assert!(applies::<f32>(g, cout), "conv_lanes: unsupported {g:?} with {cout} channels");
            assert!((1..=IMAGES).contains(&images), "conv_lanes: {images} images (1 to 16)");
            let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
            let band = band_rows(wo);
            Dims { w: g.width, ho, wo, band, band_p: band * wo, cout, images }
        }

        /// Output positions per channel.
        pub fn p(&self) -> usize {
            self.ho * self.wo
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn forward(d: &Dims, weight: &[f32], bias: Option<&[f32]>, x: &[f32], z: &mut [f32], scratch: &mut [f32]) {
        let plane = x.len() / d.images;
        let (xt, band) = scratch.split_at_mut(plane * LANES);
        image_lanes::to_lanes(x, d.images, plane, plane, xt);
        let p = d.p();
        for oh0 in (0..d.ho).step_by(d.band) {
            let out = Lanes { values: band, channel_stride: d.band_p, first: 0 };
            forward_band(d, weight, bias, xt, oh0, out);
            for co in 0..d.cout {
                let lanes = &band[co * d.band_p * LANES..][..d.band_p * LANES];
                image_lanes::from_lanes(lanes, d.images, d.band_p, &mut z[co * p + oh0 * d.wo..], d.cout * p);
            }
        }
    }

    /// Where a band of outputs goes, in lanes: position `q` of the band in
    /// channel `co` at `values[(co·channel_stride + first + q)·16 ..]`.
    pub struct Lanes<'a> {
        pub values: &'a mut [f32],
        pub channel_stride: usize,
        pub first: usize,
    }

    /// Output rows `oh0..oh0 + band` of every channel into `out`, by tiles
    /// of [`TILE`] columns. `xt` is the input in lanes.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn forward_band(d: &Dims, weight: &[f32], bias: Option<&[f32]>, xt: &[f32], oh0: usize, out: Lanes) {
        let needed = ((d.cout - 1) * out.channel_stride + out.first + d.band_p) * LANES;
        assert!(
            out.values.len() >= needed && xt.len() >= (oh0 + d.band + K - 1) * d.w * LANES && oh0 + d.band <= d.ho,
            "conv_lanes: band buffers"
        );
        // SAFETY: the lengths checked above bound every load and store
        unsafe {
            match d.cout {
                1 => forward_band_co::<1>(d, weight, bias, xt, oh0, out),
                2 => forward_band_co::<2>(d, weight, bias, xt, oh0, out),
                3 => forward_band_co::<3>(d, weight, bias, xt, oh0, out),
                4 => forward_band_co::<4>(d, weight, bias, xt, oh0, out),
                5 => forward_band_co::<5>(d, weight, bias, xt, oh0, out),
                6 => forward_band_co::<6>(d, weight, bias, xt, oh0, out),
                7 => forward_band_co::<7>(d, weight, bias, xt, oh0, out),
                _ => forward_band_co::<8>(d, weight, bias, xt, oh0, out),
            }
        }
    }

    /// # Safety
    /// As [`forward_band`] checks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    unsafe fn forward_band_co<const CO: usize>(
        d: &Dims,
        weight: &[f32],
        bias: Option<&[f32]>,
        xt: &[f32],
        oh0: usize,
        out: Lanes,
    ) {
        let (xp, wp, op) = (xt.as_ptr(), weight.as_ptr(), out.values.as_mut_ptr());
        for oh in oh0..oh0 + d.band {
            for ow0 in super::super::conv_direct::tile_starts(d.wo, TILE) {
                let mut acc = [[_mm512_setzero_ps(); CO]; TILE];
                for i in 0..K {
                    // columns ow0 .. ow0 + TILE + K - 1 ≤ w of input row oh + i < h
                    let row = xp.add(((oh + i) * d.w + ow0) * LANES);
                    // plain loops, not array::from_fn (compiled without AVX-512,
                    // it would keep its closure a call)
                    let mut xv = [_mm512_setzero_ps(); TILE + K - 1];
                    for (k, v) in xv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(row.add(k * LANES));
                    }
                    for j in 0..K {
                        for (k, acc_k) in acc.iter_mut().enumerate() {
                            for (co, a) in acc_k.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(xv[k + j], _mm512_set1_ps(*wp.add((co * K + i) * K + j)), *a);
                            }
                        }
                    }
                }
                let q = out.first + (oh - oh0) * d.wo + ow0;
                for (k, acc_k) in acc.iter().enumerate() {
                    for (co, &a) in acc_k.iter().enumerate() {
                        let v = match bias {
                            Some(b) => _mm512_add_ps(a, _mm512_set1_ps(b[co])),
                            None => a,
                        };
                        _mm512_storeu_ps(op.add((co * out.channel_stride + q + k) * LANES), v);
                    }
                }
            }
        }
    }

    /// Per block of [`BLOCK`] channels and kernel row `i`: `acc[c][j]`.
    type Sums = [[__m512; K]; BLOCK];

    /// The weight gradient's sums, in lanes, added band by band.
    pub struct GradSums {
        sums: Vec<Sums>,
    }

    impl GradSums {
        pub fn new(d: &Dims) -> Self {
            // SAFETY (intrinsics): AVX-512F is compiled in
            GradSums { sums: vec![unsafe { [[_mm512_setzero_ps(); K]; BLOCK] }; d.cout.div_ceil(BLOCK) * K] }
        }

        /// Adds `dz · x` over the band of rows from `oh0`: `band` holds the
        /// band's output gradient in lanes (`[channel][position][image]`),
        /// `xt` the input in lanes.
        pub fn add_band(&mut self, d: &Dims, xt: &[f32], band: &[f32], oh0: usize) {
            assert!(
                band.len() >= d.cout * d.band_p * LANES
                    && xt.len() >= (oh0 + d.band + K - 1) * d.w * LANES
                    && oh0 + d.band <= d.ho,
                "conv_lanes: band buffers"
            );
            for (bi, s) in self.sums.iter_mut().enumerate() {
                let (co0, i) = ((bi / K) * BLOCK, bi % K);
                // SAFETY: the lengths checked above bound every load
                *s = unsafe {
                    match (d.cout - co0).min(BLOCK) {
                        1 => band_grad::<1>(*s, d, xt, band, co0, oh0, i),
                        2 => band_grad::<2>(*s, d, xt, band, co0, oh0, i),
                        _ => band_grad::<3>(*s, d, xt, band, co0, oh0, i),
                    }
                };
            }
        }

        /// `dw[co][i][j]` (overwritten): the lanes added in a fixed order.
        pub fn write(&self, d: &Dims, dw: &mut [f32]) {
            for (bi, s) in self.sums.iter().enumerate() {
                let (co0, i) = ((bi / K) * BLOCK, bi % K);
                for (c, row) in s.iter().enumerate().take((d.cout - co0).min(BLOCK)) {
                    for (j, &v) in row.iter().enumerate() {
                        // SAFETY: AVX-512F is compiled in
                        dw[((co0 + c) * K + i) * K + j] = unsafe { _mm512_reduce_add_ps(v) };
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn weight_grad(d: &Dims, x: &[f32], dz: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
        let plane = x.len() / d.images;
        let (xt, band) = scratch.split_at_mut(plane * LANES);
        image_lanes::to_lanes(x, d.images, plane, plane, xt);
        let p = d.p();
        let mut sums = GradSums::new(d);
        for oh0 in (0..d.ho).step_by(d.band) {
            for co in 0..d.cout {
                let lanes = &mut band[co * d.band_p * LANES..][..d.band_p * LANES];
                image_lanes::to_lanes(&dz[co * p + oh0 * d.wo..], d.images, d.cout * p, d.band_p, lanes);
            }
            sums.add_band(d, xt, band, oh0);
        }
        sums.write(d, dw);
    }

    /// `acc[c][j] += dz[co0 + c][q] · x[q shifted by (i, j)]` over the band's
    /// positions `q`, in lanes. The sums go in and come out by value, which
    /// keeps them in registers through the loop.
    ///
    /// # Safety
    /// As [`GradSums::add_band`] checks.
    #[inline]
    #[allow(clippy::needless_range_loop)] // constant indices keep `acc` in registers
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    unsafe fn band_grad<const NB: usize>(
        mut acc: Sums,
        d: &Dims,
        xt: &[f32],
        band: &[f32],
        co0: usize,
        oh0: usize,
        i: usize,
    ) -> Sums {
        let (xp, bp) = (xt.as_ptr(), band.as_ptr());
        for r in 0..d.band {
            let row = xp.add((oh0 + r + i) * d.w * LANES);
            for ow in 0..d.wo {
                let q = r * d.wo + ow;
                let mut g = [_mm512_setzero_ps(); NB];
                for (c, v) in g.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(bp.add(((co0 + c) * d.band_p + q) * LANES));
                }
                for j in 0..K {
                    let xv = _mm512_loadu_ps(row.add((ow + j) * LANES));
                    for (c, &gc) in g.iter().enumerate() {
                        acc[c][j] = _mm512_fmadd_ps(gc, xv, acc[c][j]);
                    }
                }
            }
        }
        acc
    }
}

/// `z` (overwritten) = the convolution of up to 16 images `x` (one channel
/// each) with `weight` (`[cout][5][5]`) plus `bias`; `scratch` holds
/// [`scratch_len`] values and should be 64-byte aligned. Panics unless
/// [`applies`].
pub fn forward(
    g: &ConvGeometry,
    cout: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    x: &[f32],
    z: &mut [f32],
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        #[allow(unused_unsafe)]
        return unsafe {
            assert!(bias.is_none_or(|b| b.len() == cout), "conv_lanes: {cout} channels, bias length");
            let d = avx512::Dims::new(g, cout, x.len(), weight.len(), z.len(), scratch.len());
            avx512::forward(&d, weight, bias, x, z, scratch);
        };
    }
    let _ = (g, cout, weight, bias, x, z, scratch);
    unreachable!("conv_lanes::applies() is false without AVX-512")
}

/// `dw` (overwritten, `[cout][5][5]`) = the weight gradient of up to 16
/// images `x` with output gradient `dz`; the sum over images and positions
/// runs in a fixed order. `scratch` as in [`forward`].
pub fn weight_grad(g: &ConvGeometry, cout: usize, x: &[f32], dz: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        #[allow(unused_unsafe)]
        return unsafe {
            let d = avx512::Dims::new(g, cout, x.len(), dw.len(), dz.len(), scratch.len());
            avx512::weight_grad(&d, x, dz, dw, scratch);
        };
    }
    let _ = (g, cout, x, dz, dw, scratch);
    unreachable!("conv_lanes::applies() is false without AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedVec;
    use crate::kernels::conv::im2col;
    use crate::kernels::gemm::{gemm_reference, Product};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
    }

    fn geometry(h: usize, w: usize) -> ConvGeometry {
        ConvGeometry { channels: 1, height: h, width: w, kernel: 5, stride: 1, padding: 0 }
    }

    #[test]
    fn only_where_it_fits() {
        let wide = crate::isa::avx512();
        assert_eq!(applies::<f32>(&geometry(28, 28), 6), wide, "LeNet's first layer");
        assert!(!applies::<f64>(&geometry(28, 28), 6));
        assert!(!applies::<f32>(&geometry(28, 28), 9), "9 channels");
        assert!(!applies::<f32>(&ConvGeometry { channels: 2, ..geometry(28, 28) }, 6));
        assert!(!applies::<f32>(&ConvGeometry { padding: 2, ..geometry(28, 28) }, 6));
        assert!(!applies::<f32>(&geometry(27, 28), 6), "a 27x28 plane is not whole vectors");
        assert!(!applies::<f32>(&geometry(13, 16), 6), "9 output rows in bands of 4");
        assert!(!applies::<f32>(&geometry(6, 8), 6), "2 output columns");
    }

    /// Forward and weight gradient against im2col + matrix products in f64,
    /// on LeNet's shape with full and partial groups, and on shapes with
    /// other band heights, tile overlaps and channel blocks.
    #[test]
    fn matches_im2col_reference() {
        if !crate::isa::avx512() {
            return;
        }
        for (h, w, cout, images) in [(28, 28, 6, 16), (28, 28, 6, 5), (20, 20, 8, 3), (8, 12, 1, 16), (12, 8, 4, 9)] {
            let g = geometry(h, w);
            assert!(applies::<f32>(&g, cout), "{h}x{w} with {cout} channels");
            let (ho, wo) = g.output_hw().unwrap();
            let (p, kd) = (ho * wo, 25);
            let (x, weight, bias) = (values(images * h * w, 1), values(cout * kd, 2), values(cout, 3));
            let dz = values(images * cout * p, 4);
            let mut scratch = AlignedVec::from_elem(0.0f32, scratch_len(&g, cout));
            let mut z = vec![f32::NAN; images * cout * p];
            forward(&g, cout, &weight, Some(&bias), &x, &mut z, scratch.as_mut_slice());
            let mut dw = vec![f32::NAN; cout * kd];
            weight_grad(&g, cout, &x, &dz, &mut dw, scratch.as_mut_slice());

            let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
            let (w64, mut want_dw) = (f64s(&weight), vec![0.0; cout * kd]);
            let mut col = vec![0.0; kd * p];
            for n in 0..images {
                im2col(&g, &f64s(&x[n * h * w..][..h * w]), &mut col);
                let mut want = vec![0.0; cout * p];
                gemm_reference(Product::nn(cout, p, kd), 1.0, &w64, &col, 0.0, &mut want);
                for (k, &v) in want.iter().enumerate() {
                    let got = z[n * cout * p + k] as f64;
                    let v = v + bias[k / p] as f64;
                    assert!((got - v).abs() <= 1e-5 * (1.0 + v.abs()), "{h}x{w} image {n} value {k}: {got} vs {v}");
                }
                let dz_n = f64s(&dz[n * cout * p..][..cout * p]);
                gemm_reference(Product::nt(cout, kd, p), 1.0, &dz_n, &col, 1.0, &mut want_dw);
            }
            for (k, (&got, &want)) in dw.iter().zip(&want_dw).enumerate() {
                let tol = 1e-5 * (images * p) as f64;
                assert!((got as f64 - want).abs() <= tol, "{h}x{w} weight grad {k}: {got} vs {want}");
            }
        }
    }
}
