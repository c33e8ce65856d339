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

/// Whether this is the faster weight gradient: from 32 input and 32 output
/// channels. One group of images, one thread, against the padded-plane
/// kernel (`dev/examples/wgrad_winograd.rs`, Zen 4): at AVX-512 1.15-1.65x
/// on 32 -> 32 at 28x28 and 16x16, 32 -> 64 and 64 -> 64 at 14x14, 1.9-3.0x
/// at 7x7 and below; at AVX2 1.01-1.07x on 32 -> 32 at 28x28, 1.23-2.62x on
/// the others. Whole layers at batch 128, two threads, weight gradient: 32 ->
/// 32 at 28x28 11.3-11.6 -> 8.5-9.1 ms (AVX-512), 12.4-12.8 -> 11.4-11.5
/// (AVX2); 64 -> 64 at 14x14 on AVX2 14.0-14.3 -> 10.7-11.2. With 16
/// channels (16 -> 16 at 32x32: 0.75-0.83x alone, 4.3-4.7 -> 5.5-5.7 ms as
/// a layer) the transforms cost more than the products save.
pub fn prefer<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    applies::<T>(g) && g.channels >= 32 && cout >= 32
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

/// Values of `V` and `M` a run of tiles may take (512 KB, half the L2 cache
/// of a Zen 4 core), so that the products read them from L2. Each run ends
/// in adding its sums to `S`, a vector at a time. (When that add was one
/// value at a time into a transposed `S`, runs of 8 MB paid; with the
/// vector add, 512 KB runs are 1.0-1.16x faster than 8 MB ones: 128 -> 128
/// at 7x7 4.0-4.1 -> 3.6-3.8 ms a group.)
const BAND_VALUES: usize = 1 << 17;

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
        let (vs, ms) = self.xi_strides();
        16 * (vs + ms) + 16 * self.cin * self.cop + (2 * th + 2) * (2 * tw + 2) * self.cip + 2 * th * 2 * tw * self.cop
    }

    /// Values from one ξ of `V` to the next, and of `M`: a run's tiles'
    /// channels rounded up to an odd number of cache lines, so that the
    /// transforms' 16 stores of a tile, one per ξ, fall in 16 different
    /// sets of the L1 cache (with 2048 tiles of 32 channels, 256 KB apart,
    /// they all fell in one 8-way set and evicted each other).
    fn xi_strides(&self) -> (usize, usize) {
        let odd_lines = |values: usize| (values.div_ceil(16) | 1) * 16;
        let cap = self.capacity();
        (odd_lines(cap * self.cip), odd_lines(cap * self.cop))
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
        let (vs, ms) = self.xi_strides();
        let (v, rest) = scratch.split_at_mut(16 * vs);
        let (m, rest) = rest.split_at_mut(16 * ms);
        let (s, rest) = rest.split_at_mut(16 * cin * cop);
        let (xt, dyt) = rest.split_at_mut(hp * wp * cip);
        let dyt = &mut dyt[..2 * th * 2 * tw * cop];
        s.fill(0.0);
        // each image overwrites the same values of xt and dyt: the padding,
        // the padded channels and the rows and columns past dy stay zero
        xt.fill(0.0);
        dyt.fill(0.0);
        // tiles transformed into V and M, not yet in S
        let mut filled = 0;
        for n in 0..images {
            // the input channels-last in its padding: xt[y + pad][x + pad][ci]
            let image = &x[n * cin * h * w..][..cin * h * w];
            channels_last(image, (cin, h, w), &mut xt[(pad * wp + pad) * cip..], wp, cip);
            // the output gradient channels-last, zero past its last row and column
            channels_last(&dy[n * cout * ho * wo..][..cout * ho * wo], (cout, ho, wo), dyt, 2 * tw, cop);
            for ty0 in (0..th).step_by(band) {
                let rows = ty0..(ty0 + band).min(th);
                if filled + rows.len() * tw > cap {
                    products(self, (vs, ms), filled, m, v, s);
                    filled = 0;
                }
                input_transform(self, xt, v, rows.clone(), filled, vs);
                grad_transform(self, dyt, m, rows.clone(), filled, ms);
                filled += rows.len() * tw;
            }
        }
        products(self, (vs, ms), filled, m, v, s);
        // dg = Gᵀ S G, G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]
        let gm = [[1.0f32, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
        for (pair, out) in dw.chunks_exact_mut(9).enumerate() {
            let (co, ci) = (pair / cin, pair % cin);
            let e = |a: usize, b: usize| s[((a * 4 + b) * cin + ci) * cop + co];
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

/// `dst[(y·row_len + x)·cp + c] = src[(c·h + y)·w + x]` for `c <
/// channels`, `y < h`, `x < w`: planes to channels-last rows of `row_len`
/// positions. The other values of `dst` are left as they are.
fn channels_last(src: &[f32], (channels, h, w): (usize, usize, usize), dst: &mut [f32], row_len: usize, cp: usize) {
    assert!(
        src.len() == channels * h * w
            && w <= row_len
            && channels <= cp
            && (h == 0 || w == 0 || dst.len() >= ((h - 1) * row_len + w - 1) * cp + channels),
        "winograd_grad::channels_last: sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: the CPU has AVX2; the sizes checked above
        return unsafe { channels_last_avx2(src, (channels, h, w), dst, row_len, cp) };
    }
    channels_last_slow(src, (channels, h, w), dst, row_len, cp);
}

/// [`channels_last`] one value at a time: the reference, and the tails of
/// the vector form.
fn channels_last_slow(
    src: &[f32],
    (channels, h, w): (usize, usize, usize),
    dst: &mut [f32],
    row_len: usize,
    cp: usize,
) {
    for c in 0..channels {
        for (y, row) in src[c * h * w..][..h * w].chunks_exact(w).enumerate() {
            for (x, &value) in row.iter().enumerate() {
                dst[(y * row_len + x) * cp + c] = value;
            }
        }
    }
}

/// [`channels_last`] by 8x8 blocks (8 channels of 8 positions) transposed
/// in registers; the channels and positions past the last whole block one
/// value at a time.
///
/// # Safety
/// AVX2; the sizes as [`channels_last`] checks them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn channels_last_avx2(
    src: &[f32],
    (channels, h, w): (usize, usize, usize),
    dst: &mut [f32],
    row_len: usize,
    cp: usize,
) {
    use std::arch::x86_64::*;
    let (whole_c, whole_x) = (channels / 8 * 8, w / 8 * 8);
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for c0 in (0..whole_c).step_by(8) {
        for y in 0..h {
            for x0 in (0..whole_x).step_by(8) {
                // SAFETY: channel c0 + r < channels, position x0 + 8 ≤ w of row y
                // < h; the stores reach position (y, x0 + 7) and channel c0 + 7
                // < channels, within dst (checked by the caller)
                unsafe {
                    let rows: [__m256; 8] =
                        std::array::from_fn(|r| _mm256_loadu_ps(s.add(((c0 + r) * h + y) * w + x0)));
                    for (j, &v) in super::image_lanes::transpose8(rows).iter().enumerate() {
                        _mm256_storeu_ps(d.add((y * row_len + x0 + j) * cp + c0), v);
                    }
                }
            }
            for x in whole_x..w {
                for r in 0..8 {
                    dst[(y * row_len + x) * cp + c0 + r] = src[((c0 + r) * h + y) * w + x];
                }
            }
        }
    }
    let rest = &src[whole_c * h * w..];
    channels_last_slow(rest, (channels - whole_c, h, w), &mut dst[whole_c..], row_len, cp);
}

/// `V = Bᵀ d B` of the tiles of the tile rows `rows` ([`input_transform_slow`]).
fn input_transform(
    plan: &Plan,
    xt: &[f32],
    v: &mut [f32],
    rows: std::ops::Range<usize>,
    first: usize,
    xi_stride: usize,
) {
    let Plan { tw, cip, .. } = *plan;
    let wp = 2 * tw + 2;
    let tiles = rows.len() * tw;
    assert!(
        rows.is_empty()
            || ((2 * rows.end + 2) * wp <= xt.len() / cip && 15 * xi_stride + (first + tiles) * cip <= v.len()),
        "winograd_grad::input_transform: sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: the CPU has AVX2; the reads end in row 2·rows.end + 1 of
        // xt and the writes at tile first + tiles of ξ 15 (checked above)
        return unsafe { input_transform_avx2(plan, xt, v, rows, first, xi_stride) };
    }
    input_transform_slow(plan, xt, v, rows, first, xi_stride);
}

/// [`input_transform_slow`] in AVX2 vectors of eight channels, with the
/// same additions in the same order (so bitwise the same).
///
/// # Safety
/// AVX2; the sizes [`input_transform`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform_avx2(
    plan: &Plan,
    xt: &[f32],
    v: &mut [f32],
    rows: std::ops::Range<usize>,
    first: usize,
    xi_stride: usize,
) {
    use std::arch::x86_64::*;
    let Plan { tw, cip, .. } = *plan;
    let wp = 2 * tw + 2;
    for ty in rows.clone() {
        for tx in 0..tw {
            let t = first + (ty - rows.start) * tw + tx;
            // SAFETY: the tile's 4x4 positions lie in rows 2·ty..2·ty + 4 of
            // xt, its 16 outputs at tile t of each ξ (the caller's sizes)
            unsafe {
                let tile = xt.as_ptr().add((2 * ty * wp + 2 * tx) * cip);
                let out = v.as_mut_ptr().add(t * cip);
                for c0 in (0..cip).step_by(CI_BLOCK) {
                    let d = |r: usize, c: usize| _mm256_loadu_ps(tile.add((r * wp + c) * cip + c0));
                    // cols[c][a]: row a of Bᵀ d, at column c of the tile
                    let cols: [[__m256; 4]; 4] = std::array::from_fn(|c| {
                        let (d0, d1, d2, d3) = (d(0, c), d(1, c), d(2, c), d(3, c));
                        [_mm256_sub_ps(d0, d2), _mm256_add_ps(d1, d2), _mm256_sub_ps(d2, d1), _mm256_sub_ps(d1, d3)]
                    });
                    // by_row[a][c] = cols[c][a]
                    let by_row: [[__m256; 4]; 4] = std::array::from_fn(|a| std::array::from_fn(|c| cols[c][a]));
                    for (a, r) in by_row.iter().enumerate() {
                        let r = |c: usize| r[c];
                        let row = [
                            _mm256_sub_ps(r(0), r(2)),
                            _mm256_add_ps(r(1), r(2)),
                            _mm256_sub_ps(r(2), r(1)),
                            _mm256_sub_ps(r(1), r(3)),
                        ];
                        for (b, &value) in row.iter().enumerate() {
                            _mm256_storeu_ps(out.add((a * 4 + b) * xi_stride + c0), value);
                        }
                    }
                }
            }
        }
    }
}

/// `M = A dY Aᵀ` of the tiles of the tile rows `rows` ([`grad_transform_slow`]).
fn grad_transform(
    plan: &Plan,
    dyt: &[f32],
    m: &mut [f32],
    rows: std::ops::Range<usize>,
    first: usize,
    xi_stride: usize,
) {
    let Plan { tw, cop, .. } = *plan;
    let tiles = rows.len() * tw;
    assert!(
        rows.is_empty()
            || (2 * rows.end * 2 * tw <= dyt.len() / cop && 15 * xi_stride + (first + tiles) * cop <= m.len()),
        "winograd_grad::grad_transform: sizes"
    );
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        // SAFETY: the CPU has AVX2; the reads end in row 2·rows.end - 1 of
        // dyt and the writes at tile first + tiles of ξ 15 (checked above)
        return unsafe { grad_transform_avx2(plan, dyt, m, rows, first, xi_stride) };
    }
    grad_transform_slow(plan, dyt, m, rows, first, xi_stride);
}

/// [`grad_transform_slow`] in AVX2 vectors of eight channels, bitwise the
/// same (`-q` flips the sign bit, as the scalar negation does).
///
/// # Safety
/// AVX2; the sizes [`grad_transform`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_transform_avx2(
    plan: &Plan,
    dyt: &[f32],
    m: &mut [f32],
    rows: std::ops::Range<usize>,
    first: usize,
    xi_stride: usize,
) {
    use std::arch::x86_64::*;
    let Plan { tw, cop, .. } = *plan;
    let wt = 2 * tw;
    let sign = _mm256_set1_ps(-0.0);
    for ty in rows.clone() {
        for tx in 0..tw {
            let t = first + (ty - rows.start) * tw + tx;
            // SAFETY: the tile's 2x2 positions lie in rows 2·ty and 2·ty + 1
            // of dyt, its 16 outputs at tile t of each ξ (the caller's sizes)
            unsafe {
                let tile = dyt.as_ptr().add((2 * ty * wt + 2 * tx) * cop);
                let out = m.as_mut_ptr().add(t * cop);
                for c0 in (0..cop).step_by(CI_BLOCK) {
                    let g = |r: usize, c: usize| _mm256_loadu_ps(tile.add((r * wt + c) * cop + c0));
                    // per row r: dY Aᵀ = [p, p + q, p - q, -q]
                    let cols = |r: usize| {
                        let (p, q) = (g(r, 0), g(r, 1));
                        [p, _mm256_add_ps(p, q), _mm256_sub_ps(p, q), _mm256_xor_ps(q, sign)]
                    };
                    let (r0, r1) = (cols(0), cols(1));
                    for b in 0..4 {
                        let column = [
                            r0[b],
                            _mm256_add_ps(r0[b], r1[b]),
                            _mm256_sub_ps(r0[b], r1[b]),
                            _mm256_xor_ps(r1[b], sign),
                        ];
                        for (a, &value) in column.iter().enumerate() {
                            _mm256_storeu_ps(out.add((a * 4 + b) * xi_stride + c0), value);
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// `V = Bᵀ d B` of every 4x4 tile of one image, `Bᵀ = [1 0 -1 0; 0 1 1
    /// 0; 0 -1 1 0; 0 1 0 -1]`, from its padded channels-last input `xt`,
    /// into `v[ξ·xi_stride + (first + tile)·cip + ci]`, the tiles of the
    /// tile rows `rows`, eight channels a step: the reference of
    /// [`input_transform_avx2`], and the form without AVX2.
    fn input_transform_slow(plan: &Plan, xt: &[f32], v: &mut [f32], rows: std::ops::Range<usize>, first: usize, xi_stride: usize) {
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
                            let out = &mut v[(a * 4 + b) * xi_stride + t * cip + c0..][..CI_BLOCK];
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
    /// (zero past the last row and column), into `m[ξ·xi_stride + (first +
    /// tile)·cop + co]`, the tiles of the tile rows `rows`: the reference of
    /// [`grad_transform_avx2`], and the form without AVX2.
    fn grad_transform_slow(plan: &Plan, dyt: &[f32], m: &mut [f32], rows: std::ops::Range<usize>, first: usize, xi_stride: usize) {
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
                            let out = &mut m[(a * 4 + b) * xi_stride + t * cop + c0..][..CI_BLOCK];
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

/// `s[ξ][ci][co] += Σ_t m[ξ][t][co] · v[ξ][t][ci]` over the `tiles` tiles
/// (summed in tile order from zero, then added a vector at a time: `co`
/// runs to `cop`), by the level's kernel.
fn products(plan: &Plan, xi_strides: (usize, usize), tiles: usize, m: &[f32], v: &[f32], s: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: applies() checked AVX2; avx512() that level
        if crate::isa::avx512() {
            return unsafe { products_avx512(plan, xi_strides, tiles, m, v, s) };
        }
        return unsafe { products_avx2(plan, xi_strides, tiles, m, v, s) };
    }
    #[allow(unreachable_code)]
    {
        let _ = (plan, xi_strides, tiles, m, v, s);
        unreachable!("applies() is false without x86-64 AVX2");
    }
}

macro_rules! products_for {
    ($name:ident, $features:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident, $set1:ident, $fma:ident, $add:ident, $store:ident) => {
        /// Safety: the CPU must have the features named.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(plan: &Plan, (vs, ms): (usize, usize), tiles: usize, m: &[f32], v: &[f32], s: &mut [f32]) {
            use std::arch::x86_64::*;
            let Plan { cin, cip, cop, .. } = *plan;
            assert!(
                tiles * cop <= ms
                    && tiles * cip <= vs
                    && m.len() >= 16 * ms
                    && v.len() >= 16 * vs
                    && s.len() >= 16 * cin * cop
            );
            for xi in 0..16 {
                let (mp, vp) = (m.as_ptr().add(xi * ms), v.as_ptr().add(xi * vs));
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
                        for (k, a) in acc.iter().enumerate() {
                            let ci = ci0 + k;
                            if ci >= cin {
                                break;
                            }
                            // SAFETY: (xi·cin + ci)·cop + co0 + 2·lanes ≤ 16·cin·cop (asserted)
                            let sp = s.as_mut_ptr().add((xi * cin + ci) * cop + co0);
                            $store(sp, $add($load(sp), a[0]));
                            $store(sp.add($lanes), $add($load(sp.add($lanes)), a[1]));
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
    _mm512_add_ps,
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
    _mm256_add_ps,
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
    fn channels_last_matches_its_reference() {
        for (channels, h, w, row_len, cp) in
            [(8, 3, 8, 10, 8), (19, 5, 13, 15, 24), (32, 28, 28, 30, 32), (3, 2, 5, 5, 8)]
        {
            let src = values(channels * h * w, 3);
            let len = ((h - 1) * row_len + w) * cp;
            let (mut got, mut want) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            channels_last(&src, (channels, h, w), &mut got, row_len, cp);
            channels_last_slow(&src, (channels, h, w), &mut want, row_len, cp);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{channels} channels of {h}x{w} into rows of {row_len}, {cp} a position");
            assert_eq!(src[channels * h * w - 1], got[((h - 1) * row_len + w - 1) * cp + channels - 1]);
        }
    }

    /// The transforms' AVX2 forms write what the reference forms write, bit
    /// for bit, on a band of tile rows in the middle of a run.
    #[test]
    fn transforms_match_their_references() {
        if !crate::isa::avx2() {
            println!("skipped: no AVX2 here for the transforms");
            return;
        }
        let g = ConvGeometry { channels: 19, height: 9, width: 11, kernel: 3, stride: 1, padding: 1 };
        let plan = Plan::new(&g, 21);
        let (th, tw, cip, cop) = (plan.th, plan.tw, plan.cip, plan.cop);
        let xt = values((2 * th + 2) * (2 * tw + 2) * cip, 4);
        let dyt = values(2 * th * 2 * tw * cop, 5);
        let (rows, first) = (1..th, 3);
        let (vs, ms) = ((first + th * tw) * cip + 16, (first + th * tw) * cop + 16);
        #[cfg(target_arch = "x86_64")]
        {
            let (mut got, mut want) = (vec![f32::NAN; 16 * vs], vec![f32::NAN; 16 * vs]);
            // SAFETY: the CPU has AVX2 (checked above); the sizes are those input_transform checks
            unsafe { input_transform_avx2(&plan, &xt, &mut got, rows.clone(), first, vs) };
            input_transform_slow(&plan, &xt, &mut want, rows.clone(), first, vs);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "input transform");
            let (mut got, mut want) = (vec![f32::NAN; 16 * ms], vec![f32::NAN; 16 * ms]);
            // SAFETY: as above, the sizes grad_transform checks
            unsafe { grad_transform_avx2(&plan, &dyt, &mut got, rows.clone(), first, ms) };
            grad_transform_slow(&plan, &dyt, &mut want, rows, first, ms);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "gradient transform");
        }
    }

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
