//! The weight gradient of a 3x3, stride-1 convolution by Winograd's
//! F(2x2, 3x3): the forward pass of `winograd.rs` differentiated with
//! respect to the filter.
//!
//! The forward pass computes, per 2x2 output tile, `Y = Aᵀ [U ⊙ V] A` with
//! `U = G g Gᵀ` (the filter) and `V = Bᵀ d B` (the 4x4 input tile). Its
//! gradient with respect to `U ⊙ V` is `A dY Aᵀ`, so
//!
//! ```text
//! dg[co][ci] = Gᵀ S[co][ci] G,   S[co][ci] = Σ_tiles (A dY[co] Aᵀ) ⊙ (Bᵀ d[ci] B)
//! ```
//!
//! The 16 elements of `S` summed over tiles are 16 matrix products
//! `S[ξ] = M[ξ]·V[ξ]ᵀ` (`Cout` × tiles times tiles × `Cin`), run by a
//! kernel per level: 16 multiply-adds per tile and channel pair where the direct
//! weight gradient does 36 (2.25x fewer). The transforms are additions
//! (`G`'s halves are exact), once per tile and channel.
//!
//! Layout: each image channels-last (`x[y][x][ci]`), so the transforms
//! read and write vectors of channels; `V[ξ][tile][ci]`, `M[ξ][tile][co]`
//! for a band of tile rows small enough to stay in the cache; the
//! products keep a 2-vector x 8-channel block of `S` in registers over the
//! band's tiles and add it to `S`.
//!
//! Rounding: the sums run in another order than the direct kernels' and
//! the transforms add up to four values twice, so the gradient differs
//! from the direct sums by a few ulps of the partial sums (tested against
//! im2col and a plain matrix product).

use super::conv::ConvGeometry;

/// Whether the weight gradient runs here: f32, a 3x3 kernel, stride 1,
/// padding up to 2 (each output within the padded input), on a CPU with
/// AVX2 (the products are written for AVX2 and AVX-512; elsewhere the
/// direct kernels run, as for the other Winograd kernels).
pub fn applies<T: 'static>(g: &ConvGeometry) -> bool {
    super::winograd::f32_3x3_applies::<T>(g)
}

/// Whether this is the faster weight gradient: at AVX-512, from 32 input
/// and 64 output channels. One group of images, one thread, against the
/// padded-plane kernel (`dev/examples/wgrad_winograd.rs`, Zen 4): 1.24-1.52x
/// on 32 -> 64 and 64 -> 64 at 14x14, 32 -> 64, 64 -> 128 and 128 -> 128 at
/// 7x7, 64 -> 64 at 8x8, 2.19x at 4x4; 0.53-0.94x with fewer channels (16
/// -> 16 at 32x32, 32 -> 32 at 28x28 and 16x16), where the transforms cost
/// as much as the products save; at AVX2 0.5-1.27x.
pub fn prefer<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    applies::<T>(g) && crate::isa::avx512() && g.channels >= 32 && cout >= 64
}

/// The weight gradient of one convolution over a group of images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    cin: usize,
    h: usize,
    w: usize,
    pad: usize,
    cout: usize,
    /// Output size, and tile rows and columns per image.
    ho: usize,
    wo: usize,
    th: usize,
    tw: usize,
    /// Input channels rounded up to whole blocks of [`CI_BLOCK`], output
    /// channels to whole register tiles of the product.
    cip: usize,
    cop: usize,
}

/// Values of `V` and `M` a run of tiles may take (8 MB): a group of images
/// in one run where the layers this is preferred for allow it. Each run
/// ends in adding its sums to `S` (`16·Cout·Cin` values, 1 MB at 128
/// channels), which cost more than the cache misses of a longer run: with
/// runs of 512 KB, 128 -> 128 at 7x7 took 6.1 ms a group against 4.6.
const BAND_VALUES: usize = 1 << 21;

/// Input channels per block of the product's register tile and of the
/// transforms' vectors.
const CI_BLOCK: usize = 8;

/// Output channels per register tile of the product: two vectors.
fn co_block() -> usize {
    if crate::isa::avx512() {
        32
    } else {
        16
    }
}

impl Plan {
    /// The plan of a convolution of geometry `g` ([`applies`]).
    pub fn new(g: &ConvGeometry, cout: usize) -> Plan {
        assert!(g.kernel == 3 && g.stride == 1 && g.padding <= 2, "winograd_grad: 3x3, stride 1, padding <= 2 only");
        let (ho, wo) = g.output_hw().expect("winograd_grad: a convolution that fits");
        let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
        let cip = g.channels.div_ceil(CI_BLOCK) * CI_BLOCK;
        let cop = cout.div_ceil(co_block()) * co_block();
        Plan { cin: g.channels, h: g.height, w: g.width, pad: g.padding, cout, ho, wo, th, tw, cip, cop }
    }

    /// Scratch values [`Self::weight_grad`] needs (for any number of images).
    pub fn scratch_len(&self) -> usize {
        let (th, tw) = (self.th, self.tw);
        16 * (self.cip + self.cop) * self.capacity()
            + 16 * self.cout * self.cin
            + (2 * th + 2) * (2 * tw + 2) * self.cip
            + 2 * th * 2 * tw * self.cop
    }

    /// Tiles `V` and `M` hold: their values stay under [`BAND_VALUES`], so
    /// that the products read them from the cache; at least one tile row.
    fn capacity(&self) -> usize {
        (BAND_VALUES / (16 * (self.cip + self.cop))).max(self.tw)
    }

    /// `dw` (`cout·cin·9`, PyTorch's layout) is overwritten with the weight
    /// gradient of `images` images `x` (`cin` planes of `h×w` each) and
    /// their output gradients `dy` (`cout` planes of `ho×wo`). The tiles are
    /// taken image by image, row by row, and summed in that order, in runs
    /// of at most [`Self::capacity`] tiles.
    pub fn weight_grad(&self, images: usize, x: &[f32], dy: &[f32], scratch: &mut [f32], dw: &mut [f32]) {
        let Plan { cin, h, w, pad, cout, ho, wo, th, tw, cip, cop } = *self;
        assert!(
            x.len() == images * cin * h * w
                && dy.len() == images * cout * ho * wo
                && dw.len() == cout * cin * 9
                && scratch.len() >= self.scratch_len(),
            "winograd_grad::weight_grad: sizes"
        );
        let cap = self.capacity();
        let band = (cap / tw).min(th);
        let (hp, wp) = (2 * th + 2, 2 * tw + 2);
        let (v, rest) = scratch.split_at_mut(16 * cip * cap);
        let (m, rest) = rest.split_at_mut(16 * cop * cap);
        let (s, rest) = rest.split_at_mut(16 * cout * cin);
        let (xt, dyt) = rest.split_at_mut(hp * wp * cip);
        let dyt = &mut dyt[..2 * th * 2 * tw * cop];
        s.fill(0.0);
        // tiles transformed into V and M, not yet in S
        let mut filled = 0;
        for n in 0..images {
            // the input channels-last in its padding: xt[y + pad][x + pad][ci]
            xt.fill(0.0);
            for ci in 0..cin {
                for (y, row) in x[(n * cin + ci) * h * w..][..h * w].chunks_exact(w).enumerate() {
                    for (xx, &value) in row.iter().enumerate() {
                        xt[((y + pad) * wp + xx + pad) * cip + ci] = value;
                    }
                }
            }
            // the output gradient channels-last, zero past its last row and column
            dyt.fill(0.0);
            for co in 0..cout {
                for (y, row) in dy[(n * cout + co) * ho * wo..][..ho * wo].chunks_exact(wo).enumerate() {
                    for (xx, &value) in row.iter().enumerate() {
                        dyt[(y * 2 * tw + xx) * cop + co] = value;
                    }
                }
            }
            for ty0 in (0..th).step_by(band) {
                let rows = ty0..(ty0 + band).min(th);
                if filled + rows.len() * tw > cap {
                    products(self, cap, filled, m, v, s);
                    filled = 0;
                }
                input_transform(self, xt, v, rows.clone(), filled, cap);
                grad_transform(self, dyt, m, rows.clone(), filled, cap);
                filled += rows.len() * tw;
            }
        }
        products(self, cap, filled, m, v, s);
        // dg = Gᵀ S G, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
        let gm = [[1.0f32, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        for (pair, out) in dw.chunks_exact_mut(9).enumerate() {
            let e = |a: usize, b: usize| s[(a * 4 + b) * cout * cin + pair];
            // t = S G (4x3), then Gᵀ t
            let mut t = [[0.0f32; 3]; 4];
            for (a, row) in t.iter_mut().enumerate() {
                for (j, value) in row.iter_mut().enumerate() {
                    *value = (0..4).map(|b| e(a, b) * gm[b][j]).sum();
                }
            }
            for i in 0..3 {
                for j in 0..3 {
                    out[i * 3 + j] = (0..4).map(|a| gm[a][i] * t[a][j]).sum();
                }
            }
        }
    }
}

multiversion! {
    /// `V = Bᵀ d B` of every 4x4 tile of one image, `Bᵀ = [1 0 -1 0; 0 1 1
    /// 0; 0 -1 1 0; 0 1 0 -1]`, from its padded channels-last input `xt`,
    /// into `v[ξ][first + tile][ci]` (`tiles` tiles a `ξ`), the tiles of
    /// the tile rows `rows`, eight channels a step.
    fn input_transform(plan: &Plan, xt: &[f32], v: &mut [f32], rows: std::ops::Range<usize>, first: usize, tiles: usize) {
        let Plan { tw, cip, .. } = *plan;
        let wp = 2 * tw + 2;
        for ty in rows.clone() {
            for tx in 0..tw {
                let t = first + (ty - rows.start) * tw + tx;
                for c0 in (0..cip).step_by(CI_BLOCK) {
                    let d = |r: usize, c: usize| -> [f32; CI_BLOCK] {
                        xt[((2 * ty + r) * wp + 2 * tx + c) * cip + c0..][..CI_BLOCK].try_into().expect("block")
                    };
                    // cols[c][a]: row a of Bᵀ d, at column c of the tile
                    let mut cols = [[[0.0f32; CI_BLOCK]; 4]; 4];
                    for (c, col) in cols.iter_mut().enumerate() {
                        let (d0, d1, d2, d3) = (d(0, c), d(1, c), d(2, c), d(3, c));
                        for l in 0..CI_BLOCK {
                            col[0][l] = d0[l] - d2[l];
                            col[1][l] = d1[l] + d2[l];
                            col[2][l] = d2[l] - d1[l];
                            col[3][l] = d1[l] - d3[l];
                        }
                    }
                    for a in 0..4 {
                        let r = |c: usize| &cols[c][a];
                        for b in 0..4 {
                            let out = &mut v[((a * 4 + b) * tiles + t) * cip + c0..][..CI_BLOCK];
                            for (l, o) in out.iter_mut().enumerate() {
                                *o = match b {
                                    0 => r(0)[l] - r(2)[l],
                                    1 => r(1)[l] + r(2)[l],
                                    2 => r(2)[l] - r(1)[l],
                                    _ => r(1)[l] - r(3)[l],
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `M = A dY Aᵀ` of every 2x2 tile of one image's output gradient, `A =
    /// [1 0; 1 1; 1 -1; 0 -1]`, from its channels-last gradient `dyt`
    /// (zero past the last row and column), into `m[ξ][first + tile][co]`
    /// (`tiles` tiles a `ξ`), the tiles of the tile rows `rows`.
    fn grad_transform(plan: &Plan, dyt: &[f32], m: &mut [f32], rows: std::ops::Range<usize>, first: usize, tiles: usize) {
        let Plan { tw, cop, .. } = *plan;
        let wt = 2 * tw;
        for ty in rows.clone() {
            for tx in 0..tw {
                let t = first + (ty - rows.start) * tw + tx;
                for c0 in (0..cop).step_by(CI_BLOCK) {
                    let g = |r: usize, c: usize| -> [f32; CI_BLOCK] {
                        dyt[((2 * ty + r) * wt + 2 * tx + c) * cop + c0..][..CI_BLOCK].try_into().expect("block")
                    };
                    // columns: dY Aᵀ per row, then rows: A (dY Aᵀ)
                    let cols = |r: usize| {
                        let (p, q) = (g(r, 0), g(r, 1));
                        let mut out = [[0.0f32; CI_BLOCK]; 4];
                        for l in 0..CI_BLOCK {
                            out[0][l] = p[l];
                            out[1][l] = p[l] + q[l];
                            out[2][l] = p[l] - q[l];
                            out[3][l] = -q[l];
                        }
                        out
                    };
                    let (r0, r1) = (cols(0), cols(1));
                    for b in 0..4 {
                        for a in 0..4 {
                            let out = &mut m[((a * 4 + b) * tiles + t) * cop + c0..][..CI_BLOCK];
                            for (l, o) in out.iter_mut().enumerate() {
                                *o = match a {
                                    0 => r0[b][l],
                                    1 => r0[b][l] + r1[b][l],
                                    2 => r0[b][l] - r1[b][l],
                                    _ => -r1[b][l],
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `s[ξ][co][ci] += Σ_t m[ξ][t][co] · v[ξ][t][ci]` over the `tiles` tiles
/// (summed in tile order from zero, then added), by the level's kernel.
fn products(plan: &Plan, cap: usize, tiles: usize, m: &[f32], v: &[f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: applies() checked AVX2; avx512() that level
        if crate::isa::avx512() {
            return unsafe { products_avx512(plan, cap, tiles, m, v, s) };
        }
        return unsafe { products_avx2(plan, cap, tiles, m, v, s) };
    }
    #[allow(unreachable_code)]
    {
        let _ = (plan, cap, tiles, m, v, s);
        unreachable!("applies() is false without x86-64 AVX2");
    }
}

macro_rules! products_for {
    ($name:ident, $features:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
        /// Safety: the CPU must have the features named.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(plan: &Plan, cap: usize, tiles: usize, m: &[f32], v: &[f32], s: &mut [f32]) {
            use std::arch::x86_64::*;
            let Plan { cin, cout, cip, cop, .. } = *plan;
            assert!(
                tiles <= cap && m.len() >= 16 * cap * cop && v.len() >= 16 * cap * cip && s.len() >= 16 * cout * cin
            );
            for xi in 0..16 {
                let (mp, vp) = (m.as_ptr().add(xi * cap * cop), v.as_ptr().add(xi * cap * cip));
                for co0 in (0..cop).step_by(2 * $lanes) {
                    for ci0 in (0..cip).step_by(CI_BLOCK) {
                        let mut acc: [[$vec; 2]; CI_BLOCK] = [[$zero(); 2]; CI_BLOCK];
                        for t in 0..tiles {
                            // SAFETY: t < tiles, co0 + 2·lanes ≤ cop, ci0 + 8 ≤ cip (asserted sizes)
                            let (m0, m1) = ($load(mp.add(t * cop + co0)), $load(mp.add(t * cop + co0 + $lanes)));
                            let row = vp.add(t * cip + ci0);
                            for (k, a) in acc.iter_mut().enumerate() {
                                let b = $set1(*row.add(k));
                                a[0] = $fma(m0, b, a[0]);
                                a[1] = $fma(m1, b, a[1]);
                            }
                        }
                        let mut lanes = [0.0f32; 2 * $lanes];
                        for (k, a) in acc.iter().enumerate() {
                            let ci = ci0 + k;
                            if ci >= cin {
                                break;
                            }
                            $store(lanes.as_mut_ptr(), a[0]);
                            $store(lanes.as_mut_ptr().add($lanes), a[1]);
                            for (l, &value) in lanes.iter().enumerate() {
                                let co = co0 + l;
                                if co < cout {
                                    s[(xi * cout + co) * cin + ci] += value;
                                }
                            }
                        }
                    }
                }
            }
        }
    };
}

products_for!(
    products_avx512,
    "avx512f,avx512bw,avx512dq,avx512vl,fma",
    16,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps
);
products_for!(
    products_avx2,
    "avx2,fma",
    8,
    __m256,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col;
    use crate::kernels::gemm::{gemm_reference, Product};

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
    }

    /// The Winograd weight gradient equals im2col + a plain matrix product
    /// (in f64) to 1e-4 of the largest gradient, on even and odd outputs,
    /// paddings 0 to 2, one to three images, and a plane cut into bands
    /// (64 channels at 30x29: 4 tile rows a band).
    #[test]
    fn matches_the_direct_sums() {
        for (cin, cout, h, w, pad, images) in [
            (3, 5, 8, 8, 1, 1),
            (4, 8, 7, 9, 1, 3),
            (2, 3, 6, 5, 0, 2),
            (5, 4, 5, 6, 2, 2),
            (16, 16, 14, 14, 1, 2),
            (64, 64, 30, 29, 1, 2),
        ] {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: 3, stride: 1, padding: pad };
            let (ho, wo) = g.output_hw().unwrap();
            let (kd, p) = (g.col_rows(), ho * wo);
            let x = values(images * cin * h * w, 1);
            let dy = values(images * cout * p, 2);
            let mut want = vec![0.0f64; cout * kd];
            for n in 0..images {
                let xn: Vec<f64> = x[n * cin * h * w..][..cin * h * w].iter().map(|&v| v as f64).collect();
                let dyn_: Vec<f64> = dy[n * cout * p..][..cout * p].iter().map(|&v| v as f64).collect();
                let mut col = vec![0.0f64; kd * p];
                im2col(&g, &xn, &mut col);
                gemm_reference(Product::nt(cout, kd, p), 1.0, &dyn_, &col, 1.0, &mut want);
            }
            let plan = Plan::new(&g, cout);
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            let mut got = vec![f32::NAN; cout * kd];
            plan.weight_grad(images, &x, &dy, &mut scratch, &mut got);
            let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
            for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a as f64 - b).abs() <= 1e-4 * scale,
                    "{cin}->{cout} {h}x{w} pad {pad}, {images} images, value {k}: {a} vs {b}"
                );
            }
        }
    }
}
