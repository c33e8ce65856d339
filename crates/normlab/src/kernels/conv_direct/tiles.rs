// The direct forward tiles of `conv_direct` for f32 on x86-64 in 8-lane
// vectors, written with intrinsics: `CB` channels x `R` output rows x 8
// columns, `CB·R` accumulators. The same products and additions in the
// same order as the generic `forward_tiled` (per output: the taps in
// (ci, i, j) order from zero, then the bias), so bitwise its values.
//
// Why by hand: the generic loops, compiled per level, left accumulators in
// memory or joined pairs of them into 16-lane registers as the compiler
// saw fit, and which it did changed with the code around them (the same
// 6x3 tile measured 41 to 96 GFLOP/s, `dev/examples/conv_tiles.rs`). Plain
// loops over intrinsics keep a tile's accumulators in registers, and the
// tile shape, chosen per level in `tile_shape`, decides whether they fit.

use super::{tile_starts, ConvGeometry, LANES};

macro_rules! forward_tile_for {
    ($name:ident, $features:literal) => {
        /// Safety: the CPU must have the features named.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $name<const K: usize, const CB: usize, const R: usize>(
            g: &ConvGeometry,
            cout: usize,
            packed: &[f32],
            bias: Option<&[f32]>,
            x: &[f32],
            y: &mut [f32],
        ) {
            use std::arch::x86_64::*;
            let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
            let (cin, h, w) = (g.channels, g.height, g.width);
            assert!(
                ho >= R
                    && wo >= LANES
                    && x.len() == cin * h * w
                    && y.len() == cout * ho * wo
                    && packed.len() == cout.div_ceil(CB) * cin * K * K * CB,
                "forward tile: shapes"
            );
            let (xp, wp) = (x.as_ptr(), packed.as_ptr());
            for b in 0..cout.div_ceil(CB) {
                let co0 = b * CB;
                let valid = CB.min(cout - co0);
                for oh in tile_starts(ho, R) {
                    for ow in tile_starts(wo, LANES) {
                        let mut acc = [[_mm256_setzero_ps(); R]; CB];
                        for ci in 0..cin {
                            for i in 0..K {
                                let wrow = wp.add(((b * cin + ci) * K + i) * K * CB);
                                let xrow = xp.add((ci * h + oh + i) * w + ow);
                                for j in 0..K {
                                    // SAFETY: rows oh + i + r < h (oh + R ≤ ho) and
                                    // columns ow + j + 8 ≤ wo + K - 1 = w; the
                                    // block's weights lie in `packed` (asserted)
                                    let mut xs = [_mm256_setzero_ps(); R];
                                    for (r, v) in xs.iter_mut().enumerate() {
                                        *v = _mm256_loadu_ps(xrow.add(r * w + j));
                                    }
                                    for (c, row) in acc.iter_mut().enumerate() {
                                        let wv = _mm256_broadcast_ss(&*wrow.add(j * CB + c));
                                        for (a, &xv) in row.iter_mut().zip(&xs) {
                                            *a = _mm256_fmadd_ps(wv, xv, *a);
                                        }
                                    }
                                }
                            }
                        }
                        for (c, planes) in acc.iter().enumerate().take(valid) {
                            let bv = _mm256_set1_ps(bias.map_or(0.0, |b| b[co0 + c]));
                            for (r, &v) in planes.iter().enumerate() {
                                let out = &mut y[((co0 + c) * ho + oh + r) * wo + ow..][..LANES];
                                // SAFETY: `out` holds 8 values
                                _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(v, bv));
                            }
                        }
                    }
                }
            }
        }
    };
}

forward_tile_for!(forward_avx2, "avx2,fma");
forward_tile_for!(forward_avx512, "avx512f,avx512bw,avx512dq,avx512vl,fma");
