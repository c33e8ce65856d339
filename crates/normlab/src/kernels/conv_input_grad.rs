//! Input gradient of a stride-1, unpadded convolution with a 5x5 kernel,
//! computed directly (no `Wᵀ·dy` matrix, no col2im), for f32 on x86-64 with
//! AVX2 and FMA. Other cases take the general path in `layers::conv2d`
//! (matrix product and col2im), which is the reference this is tested against.
//!
//! `dx[ci][y][x] = Σ_co Σ_{i,j} w[co][ci][i][j] · dy[co][y-i][x-j]`
//! (terms whose `dy` index falls outside the output are zero)
//!
//! Gathered by input row: for input row `y`, a block of `CB` ([`channel_block`]) input
//! channels and a run of 8 output columns starting at `x0`, one accumulator
//! per (channel, kernel column `j`) sums `w[co][ci][i][j] · dy[co][y-i][x0..x0+8]`
//! over `co` and the kernel rows `i` that reach an output row, so no
//! multiply-add works on padding (LeNet's conv2: 19,200 8-lane ones per
//! image) and no 150x64 intermediate is written and read back. The
//! accumulator for column `j` belongs `j` columns to the right: at the end
//! of the row each is rotated into place with one lane permutation, and the
//! lanes that run past the 8 columns carry into the next run.
//!
//! On AVX-512 with 8 output columns, two input rows share a 16-lane vector
//! (their `dy` rows are adjacent in memory). LeNet's conv2, one image in L1,
//! one thread: 3.9 µs with 8 lanes, 2.1 µs with 16; the layer's input
//! gradient at batch 128 on 2 threads went from 0.43 ms (matrix product +
//! col2im) to 0.22 ms (`dev/examples/conv_layer_parts.rs`).
//!
//! Why not the forward kernel on a zero-padded `dy`: padding the 8x8
//! gradient to 16x16 makes 2.25x the multiply-adds.

use super::conv::ConvGeometry;

/// The kernel size this handles (LeNet's).
const K: usize = 5;

/// Input channels per block: `CB·K` accumulators. With AVX-512's 32 vector
/// registers 6 channels (30 accumulators) fit; AVX2 has 16, so 2 (10).
const CB_AVX512: usize = 6;
const CB_AVX2: usize = 2;

/// The block of input channels of the kernel [`crate::isa::active`] picks;
/// [`pack_weights`] and [`input_grad`] must be called under the same one.
pub fn channel_block() -> usize {
    if crate::isa::avx512() {
        CB_AVX512
    } else {
        CB_AVX2
    }
}

/// Lane indices that move lane `t` of each 8-lane group to lane `t + j`
/// (mod 8), one table per kernel column `j`, for `L` lanes.
#[cfg(target_arch = "x86_64")]
const fn rotations<const L: usize>() -> [[i32; L]; K] {
    let mut idx = [[0; L]; K];
    let mut j = 0;
    while j < K {
        let mut t = 0;
        while t < L {
            idx[j][t] = ((t / 8) * 8 + (t % 8 + 8 - j) % 8) as i32;
            t += 1;
        }
        j += 1;
    }
    idx
}

/// Whether [`input_grad`] handles this convolution: f32 with AVX2 and FMA
/// or more active ([`crate::isa`]), stride 1, no padding, kernel 5, output
/// width a multiple of 8.
pub fn applies<T: 'static>(g: &ConvGeometry) -> bool {
    let cb = channel_block();
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.stride == 1
        && g.padding == 0
        && g.kernel == K
        && g.output_hw().is_some_and(|(_, wo)| wo.is_multiple_of(8))
        // channels padded to whole blocks: at most 1.5x the work (one input
        // channel, as in a first layer, is faster as a matrix product)
        && 2 * g.channels.div_ceil(cb) * cb <= 3 * g.channels
}

/// Reorders `w[co][ci][i][j]` into `packed[block][co][i][c][j]` for blocks of
/// `CB =` [`channel_block`] input channels (`ci = block·CB + c`), zero-padded
/// to whole blocks: the `CB·K` weights one gradient row meets are then
/// contiguous.
pub fn pack_weights(w: &[f32], cout: usize, cin: usize, packed: &mut Vec<f32>) {
    assert_eq!(w.len(), cout * cin * K * K, "pack_weights: weight shape");
    #[allow(non_snake_case)]
    let CB = channel_block();
    let blocks = cin.div_ceil(CB);
    packed.clear();
    packed.resize(blocks * cout * K * CB * K, 0.0);
    for co in 0..cout {
        for ci in 0..cin {
            let (b, c) = (ci / CB, ci % CB);
            for i in 0..K {
                for j in 0..K {
                    packed[(((b * cout + co) * K + i) * CB + c) * K + j] = w[((co * cin + ci) * K + i) * K + j];
                }
            }
        }
    }
}

/// One image: `dx` (`cin × h × w`) is overwritten with the input gradient
/// for `dy` (`cout × ho × wo`); `packed` is [`pack_weights`] of the weights.
/// Call only where [`applies`] holds.
pub fn input_grad(g: &ConvGeometry, cout: usize, packed: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(applies::<f32>(g), "input_grad: unsupported geometry {g:?}");
    let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    let cb = channel_block();
    assert!(
        dy.len() == cout * ho * wo && dx.len() == cin * h * w && packed.len() == cin.div_ceil(cb) * cout * K * cb * K,
        "input_grad: buffer sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the sizes are asserted above; the CPU has AVX-512
        // (isa::active checked it); the first kernel needs wo = 8
        return unsafe {
            if wo == 8 {
                avx512::input_grad(g, cout, packed, dy, dx)
            } else {
                avx2_on_avx512::input_grad(g, cout, packed, dy, dx)
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the sizes are asserted above; applies() checked that the CPU
    // has AVX2 and FMA
    unsafe {
        avx2::input_grad(g, cout, packed, dy, dx)
    }
}

/// The same on AVX-512, two input rows per 16-lane vector: rows `y` and
/// `y + 1` need `dy` rows `y - i` and `y + 1 - i`, which lie next to each
/// other in memory when the output is 8 wide, so one load serves both and
/// each multiply-add does 16 outputs. At the top and bottom edges one of
/// the two rows does not exist and its half is masked off (10% of the
/// lanes for LeNet's conv2).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ConvGeometry, K};
    const CB: usize = super::CB_AVX512;
    use std::arch::x86_64::*;

    /// Per 8-lane half, lane `t` moved to lane `t + j` (mod 8).
    ///
    /// # Safety
    /// None beyond the module's: it is compiled only where the target has
    /// AVX-512F, and `IDX[j]` is bounds-checked (a `j >= K` panics).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    unsafe fn rotate(v: __m512, j: usize) -> __m512 {
        const IDX: [[i32; 16]; K] = super::rotations();
        _mm512_permutexvar_ps(_mm512_loadu_si512(IDX[j].as_ptr() as *const _), v)
    }

    /// Per half, lanes `t >= j`: those that stay in this run of 8 columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    fn stays(j: usize) -> __mmask16 {
        let half = (0xffu16 << j) & 0xff;
        half | (half << 8)
    }

    /// # Safety
    /// Sizes as asserted by `super::input_grad`, and `wo == 8` (so that two
    /// consecutive `dy` rows are one 16-value run).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub unsafe fn input_grad(g: &ConvGeometry, cout: usize, packed: &[f32], dy: &[f32], dx: &mut [f32]) {
        let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
        let (cin, h, w) = (g.channels, g.height, g.width);
        let (dyp, wp, dxp) = (dy.as_ptr(), packed.as_ptr(), dx.as_mut_ptr());
        let valid_row = |r: isize| r >= 0 && r < ho as isize;
        for b in 0..cin.div_ceil(CB) {
            let valid = CB.min(cin - b * CB);
            for y in (0..h).step_by(2) {
                // kernel rows i for which dy row y - i or y + 1 - i exists
                let (i_first, i_last) = ((y + 1).saturating_sub(ho), (y + 1).min(K - 1));
                let mut acc = [[_mm512_setzero_ps(); K]; CB];
                for i in i_first..=i_last {
                    let top = y as isize - i as isize;
                    let mask =
                        (if valid_row(top) { 0x00ff } else { 0 }) | (if valid_row(top + 1) { 0xff00 } else { 0 });
                    // the masked-off half is not read, so its address may lie outside dy
                    let first = dyp.wrapping_offset(top * wo as isize);
                    for co in 0..cout {
                        let d = _mm512_maskz_loadu_ps(mask, first.wrapping_add(co * ho * wo));
                        let ws = wp.add((((b * cout + co) * K + i) * CB) * K);
                        for (c, a) in acc.iter_mut().enumerate() {
                            for (j, a) in a.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*ws.add(c * K + j)), d, *a);
                            }
                        }
                    }
                }
                // both rows of the pair, or only y when y + 1 is past the image
                let rows = if y + 1 < h { 2 } else { 1 };
                for (c, a) in acc.iter().enumerate().take(valid) {
                    let mut here = a[0];
                    let mut spill = _mm512_setzero_ps();
                    for (j, &v) in a.iter().enumerate().skip(1) {
                        let r = rotate(v, j);
                        here = _mm512_mask_add_ps(here, stays(j), here, r);
                        spill = _mm512_mask_add_ps(spill, !stays(j), spill, r);
                    }
                    for half in 0..rows {
                        let mut lanes = [0.0f32; 16];
                        _mm512_storeu_ps(lanes.as_mut_ptr(), here);
                        let row = dxp.add(((b * CB + c) * h + y + half) * w);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr().add(8 * half), row, 8);
                        _mm512_storeu_ps(lanes.as_mut_ptr(), spill);
                        std::ptr::copy_nonoverlapping(lanes.as_ptr().add(8 * half), row.add(wo), K - 1);
                    }
                }
            }
        }
    }
}

/// The AVX2 kernel, one row of 8 columns per vector, compiled for AVX2
/// (2 channels per block, 16 registers) and for AVX-512 (6 channels per
/// block, the 32 registers AVX-512VL gives 256-bit vectors too).
macro_rules! avx2_kernel {
    ($name:ident, $features:literal, $cb:expr) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::{ConvGeometry, K};
            const CB: usize = $cb;
            use std::arch::x86_64::*;

            /// Lane permutation that moves lane `t` to lane `t + j` (mod 8): with the
            /// lanes below `j` kept that gives the columns that spill into the next
            /// block, with the others those of this block.
            ///
            /// # Safety
            /// None beyond the module's: it is compiled only where the target has
            /// AVX2, and `IDX[j]` is bounds-checked (a `j >= K` panics).
            #[target_feature(enable = $features)]
            unsafe fn rotate(v: __m256, j: usize) -> __m256 {
                const IDX: [[i32; 8]; K] = super::rotations();
                _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(IDX[j].as_ptr() as *const __m256i))
            }

            /// All ones in lanes `t >= j`: the lanes of a rotated accumulator that stay
            /// in this block.
            ///
            /// # Safety
            /// `j <= 8`, so that the 8 values loaded from `MASK[8 - j..]` lie inside
            /// `MASK` (callers pass a kernel column, `j < K = 5`); AVX2 is compiled in.
            #[target_feature(enable = $features)]
            unsafe fn stays(j: usize) -> __m256 {
                const MASK: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1];
                _mm256_loadu_ps(MASK.as_ptr().add(8 - j) as *const f32)
            }

            /// # Safety
            /// Sizes as asserted by `super::input_grad`.
            #[target_feature(enable = $features)]
            pub unsafe fn input_grad(g: &ConvGeometry, cout: usize, packed: &[f32], dy: &[f32], dx: &mut [f32]) {
                let (ho, wo) = g.output_hw().expect("applies() checked the geometry");
                let (cin, h, w) = (g.channels, g.height, g.width);
                let (dyp, wp, dxp) = (dy.as_ptr(), packed.as_ptr(), dx.as_mut_ptr());
                for b in 0..cin.div_ceil(CB) {
                    let valid = CB.min(cin - b * CB);
                    for y in 0..h {
                        // kernel rows i with 0 <= y - i < ho
                        let (i_first, i_last) = ((y + 1).saturating_sub(ho), y.min(K - 1));
                        // columns spilled from the previous 8-column run, per channel
                        let mut carry = [_mm256_setzero_ps(); CB];
                        for x0 in (0..wo).step_by(8) {
                            let mut acc = [[_mm256_setzero_ps(); K]; CB];
                            for co in 0..cout {
                                for i in i_first..=i_last {
                                    let d = _mm256_loadu_ps(dyp.add((co * ho + y - i) * wo + x0));
                                    let ws = wp.add((((b * cout + co) * K + i) * CB) * K);
                                    for (c, a) in acc.iter_mut().enumerate() {
                                        for (j, a) in a.iter_mut().enumerate() {
                                            *a = _mm256_fmadd_ps(_mm256_set1_ps(*ws.add(c * K + j)), d, *a);
                                        }
                                    }
                                }
                            }
                            for (c, (a, carry)) in acc.iter().zip(carry.iter_mut()).enumerate().take(valid) {
                                let mut here = _mm256_add_ps(a[0], *carry);
                                let mut spill = _mm256_setzero_ps();
                                for (j, &v) in a.iter().enumerate().skip(1) {
                                    let (r, m) = (rotate(v, j), stays(j));
                                    here = _mm256_add_ps(here, _mm256_and_ps(r, m));
                                    spill = _mm256_add_ps(spill, _mm256_andnot_ps(m, r));
                                }
                                _mm256_storeu_ps(dxp.add(((b * CB + c) * h + y) * w + x0), here);
                                *carry = spill;
                            }
                        }
                        // the last run's spill: the row's final K - 1 columns
                        for (c, carry) in carry.iter().enumerate().take(valid) {
                            let mut tail = [0.0f32; 8];
                            _mm256_storeu_ps(tail.as_mut_ptr(), *carry);
                            let row = dxp.add(((b * CB + c) * h + y) * w + wo);
                            std::ptr::copy_nonoverlapping(tail.as_ptr(), row, K - 1);
                        }
                    }
                }
            }
        }
    };
}
avx2_kernel!(avx2, "avx2,fma", super::CB_AVX2);
avx2_kernel!(avx2_on_avx512, "avx512f,avx512bw,avx512dq,avx512vl,fma", super::CB_AVX512);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::col2im;
    use crate::kernels::gemm::{gemm_reference, Product};

    /// Equals `col2im(Wᵀ · dy)` (the general path), computed in f64.
    #[test]
    fn matches_the_matrix_product_and_col2im() {
        // LeNet's conv2; two runs of 8 columns (the spill carried between
        // them); one input channel past a whole block; a single output row
        for (cin, cout, h, w) in [(6, 16, 12, 12), (6, 4, 9, 20), (2 * channel_block() + 1, 3, 14, 12), (6, 5, 5, 12)] {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: K, stride: 1, padding: 0 };
            let built_for_it = crate::isa::avx2();
            assert_eq!(applies::<f32>(&g), built_for_it, "{g:?}");
            if !built_for_it {
                return;
            }
            let (ho, wo) = g.output_hw().unwrap();
            let values = |n: usize, seed: usize| -> Vec<f32> {
                (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
            };
            let (wt, dy) = (values(cout * cin * K * K, 1), values(cout * ho * wo, 2));
            // col2im(Wᵀ · dy) in f64, and the same of |W| and |dy|: the size of
            // the terms, which bounds the rounding error of an f32 sum
            let reference = |f: fn(f32) -> f64| {
                let (wt, dy) =
                    (wt.iter().map(|&v| f(v)).collect::<Vec<_>>(), dy.iter().map(|&v| f(v)).collect::<Vec<_>>());
                let mut dcol = vec![0.0; g.col_rows() * ho * wo];
                gemm_reference(Product::tn(g.col_rows(), ho * wo, cout), 1.0, &wt, &dy, 0.0, &mut dcol);
                let mut image = vec![0.0; cin * h * w];
                col2im(&g, &dcol, &mut image);
                image
            };
            let (want, scale) = (reference(|v| v as f64), reference(|v| v.abs() as f64));
            let mut packed = Vec::new();
            pack_weights(&wt, cout, cin, &mut packed);
            let mut got = vec![f32::NAN; cin * h * w];
            input_grad(&g, cout, &packed, &dy, &mut got);
            for (k, ((&a, &b), &s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                assert!((a as f64 - b).abs() <= 4e-6 * s, "{g:?} value {k}: {a} vs {b} (terms' size {s})");
            }
        }
    }

    #[test]
    fn only_where_it_fits() {
        let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
        assert!(!applies::<f64>(&g));
        assert!(!applies::<f32>(&ConvGeometry { width: 13, ..g }), "9 output columns");
        assert!(!applies::<f32>(&ConvGeometry { kernel: 3, ..g }));
        assert!(!applies::<f32>(&ConvGeometry { padding: 1, ..g }));
        assert!(!applies::<f32>(&ConvGeometry { stride: 2, ..g }));
        assert!(!applies::<f32>(&ConvGeometry { channels: 1, ..g }), "one channel padded to a block");
    }
}
