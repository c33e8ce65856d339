//! Direct convolution with the vector lanes over output channels (f32,
//! AVX-512 or AVX2), stride 1 or 2, any kernel size and padding, on
//! zero-padded planes.
//!
//! `y[co][oh][ow] = b[co] + Σ_{ci,i,j} w[co][ci][i][j] · xp[ci][oh·s+i][ow·s+j]`,
//! `xp` the input with `p` zeros on each side (`Wp = W + 2p`).
//!
//! Register tile: `V` vectors of output channels (`V·lanes` channels) times
//! `P` consecutive output positions of one row. Per tap `(ci, i, j)`: `V`
//! loads of packed weights, `P` broadcasts of input values
//! `xp[ci][oh·s+i][(ow0+p)·s+j]`, `V·P` multiply-adds. Unlike
//! [`super::conv_planes`], which puts output positions in the lanes and
//! computes the `k-1` padding columns of every row too (7x7 with padding 1:
//! 63 of its 64 computed positions come from 9-wide rows, 49 of them used),
//! every computed value here is an output, whatever the plane's size or
//! the stride, as long as the channels fill the vectors; the price is a
//! transpose when the tile is stored (positions are contiguous in the
//! output, channels are in the lanes), once per `Cin·k·k` multiply-adds.
//!
//! The tile (`V`, `P`) is picked per plan from the ISA's list as the one
//! that computes the fewest values (rows cut into tiles, channels rounded
//! up to whole vectors), ties to the larger tile. A row's last tile may
//! hang past the row: its extra positions read the next row (or the slack
//! past the last plane) and are not stored.
//!
//! The input gradient of a stride-1 convolution is a forward pass over the
//! output gradient padded by `k-1-p` with the kernel flipped and its
//! channels swapped ([`Plan::input_grad`]), as in `conv_planes`.
//!
//! The im2col + matrix-product path of `layers::conv2d` is the reference
//! these are tested against (to rounding: the sums run in another order).

use super::conv::ConvGeometry;

/// The most positions a tile takes.
const P_MAX: usize = 28;

/// The register tiles and vector lanes of the kernel [`crate::isa::active`]
/// picks: each ISA's list is the one its kernel module is instantiated with
/// below (one match arm per tile), none without x86-64 kernels.
fn tiles() -> (&'static [(usize, usize)], usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        (avx512::TILES, 16)
    } else {
        (avx2::TILES, 8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    (&[], 8)
}

/// The tile with the least cost for `cout` channels of rows of `wo`
/// outputs: the values it computes, plus a load per tap of each weight
/// vector and each broadcast, weighted as half a multiply-add (the loads
/// issue beside the arithmetic, but not for free). Ties go to the first.
fn best_tile(wo: usize, cout: usize) -> (usize, usize) {
    let (shapes, lanes) = tiles();
    best_tile_of(shapes, lanes, wo, cout)
}

/// [`best_tile`] from the tiles `shapes` of `lanes`-wide vectors.
pub(super) fn best_tile_of(shapes: &[(usize, usize)], lanes: usize, wo: usize, cout: usize) -> (usize, usize) {
    let cost = |&(v, p): &(usize, usize)| {
        let (row_tiles, blocks) = (wo.div_ceil(p), cout.div_ceil(v * lanes));
        let fmas = row_tiles * blocks * v * p;
        let loads = row_tiles * blocks * (v + p);
        2 * fmas + loads
    };
    let mut best = shapes[0];
    for shape in &shapes[1..] {
        if cost(shape) < cost(&best) {
            best = *shape;
        }
    }
    best
}

/// Whether this kernel runs a convolution: f32 on AVX-512 or AVX2, stride 1
/// or 2, and at least one vector of output channels (fewer would leave
/// lanes idle; `conv_planes` and the direct kernels serve those).
pub fn applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    let lanes = tiles().1;
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && (g.stride == 1 || g.stride == 2)
        && g.output_hw().is_some()
        && cout >= lanes
}

/// Whether the input gradient runs here: stride 1 (the dual of a strided
/// convolution is not a convolution with stride), padding below the kernel
/// size, and at least one vector of input channels.
pub fn input_grad_applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    let lanes = tiles().1;
    applies::<T>(g, cout) && g.stride == 1 && g.padding < g.kernel && g.channels >= lanes
}

/// Whether this kernel is the faster one for the forward pass (else
/// `conv_planes` at stride 1, im2col + matrix product at stride 2). Measured
/// one image, one thread (`dev/examples/conv_channels.rs`, Zen 4): with
/// `Cin·k·k` from 128 it beats the padded planes 1.0-1.2x on 3x3 planes
/// of 7 to 28 and 2x on 4x4, and im2col 2.1-2.3x at stride 2; below, the
/// transpose at each tile's store costs more than it saves (a 3-channel
/// stem: 0.63x; a 1x1 stride-2 shortcut: 0.85x). One vector of channels on
/// wide rows (16 channels at AVX-512, 32x32) loses to the planes (0.92x).
pub fn prefer<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    let lanes = tiles().1;
    let wide_single_vector = cout < 2 * lanes && g.output_hw().is_some_and(|(_, wo)| wo >= 24);
    applies::<T>(g, cout) && g.col_rows() >= 128 && !(g.stride == 1 && wide_single_vector)
}

/// [`prefer`] for the input gradient ([`input_grad_applies`]): the dual
/// convolution sums over `Cout·k·k` into `Cin` channels.
pub fn prefer_input_grad<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    let Some((ho, wo)) = g.output_hw() else { return false };
    let dual = ConvGeometry {
        channels: cout,
        height: ho,
        width: wo,
        kernel: g.kernel,
        stride: 1,
        padding: (g.kernel - 1).saturating_sub(g.padding),
    };
    input_grad_applies::<T>(g, cout) && prefer::<T>(&dual, g.channels)
}

/// The shape of one direct convolution: `cin` planes of `h×w` padded by
/// `pad`, a `k×k` kernel with stride `stride`, `cout` output planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub cout: usize,
    /// Vectors of channels and positions per register tile (one of the
    /// active ISA's tiles).
    v: usize,
    p: usize,
    lanes: usize,
}

impl Plan {
    /// The forward pass of a convolution of geometry `g` ([`applies`]).
    pub fn forward(g: &ConvGeometry, cout: usize) -> Plan {
        Plan::with_best_tile(g.channels, g.height, g.width, g.kernel, g.stride, g.padding, cout)
    }

    /// Its input gradient (stride 1), as a forward pass over `dy` (`cout`
    /// planes of the forward's output size, padded by `k - 1 - p`) into
    /// `cin` planes.
    pub fn input_grad(g: &ConvGeometry, cout: usize) -> Option<Plan> {
        let (ho, wo) = g.output_hw()?;
        let pad = (g.kernel - 1).checked_sub(g.padding)?;
        (g.stride == 1).then(|| Plan::with_best_tile(cout, ho, wo, g.kernel, 1, pad, g.channels))
    }

    fn with_best_tile(cin: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize, cout: usize) -> Plan {
        let lanes = tiles().1;
        let plan = Plan { cin, h, w, k, stride, pad, cout, v: 1, p: 1, lanes };
        let (v, p) = best_tile(plan.output_hw().1, cout);
        Plan { v, p, ..plan }
    }

    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }

    fn plane(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp()
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let (hp, wp) = (self.h + 2 * self.pad, self.wp());
        ((hp - self.k) / self.stride + 1, (wp - self.k) / self.stride + 1)
    }

    /// Output channels per tile.
    fn block(&self) -> usize {
        self.v * self.lanes
    }

    /// Values of one padded input ([`Self::pad_input`]): the planes, and
    /// slack for the reads of a row's last tile past the row's end.
    pub fn padded_len(&self) -> usize {
        self.cin * self.plane() + P_MAX * self.stride + self.k
    }

    /// Values of the packed weights ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        self.cout.div_ceil(self.block()) * self.cin * self.k * self.k * self.block()
    }

    /// `x` (`cin` planes of `h×w`) into `xp` with `pad` zeros around each plane.
    pub fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
        assert!(xp.len() >= self.padded_len(), "conv_channels::pad_input: sizes");
        super::conv::pad_planes(x, (self.cin, self.h, self.w), self.pad, xp);
    }

    /// Weights `w[co][ci][i][j]` into `packed[block][ci][i][j][c]`
    /// (`co = block·V·lanes + c`), zero past `cout`.
    pub fn pack_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        let (kk, block) = (self.k * self.k, self.block());
        assert_eq!(w.len(), self.cout * self.cin * kk, "conv_channels::pack_weights: weight size");
        packed.clear();
        packed.resize(self.packed_len(), 0.0);
        for co in 0..self.cout {
            let (b, c) = (co / block, co % block);
            for ci in 0..self.cin {
                for t in 0..kk {
                    packed[((b * self.cin + ci) * kk + t) * block + c] = w[(co * self.cin + ci) * kk + t];
                }
            }
        }
    }

    /// The weights of the forward convolution `w[co][ci][i][j]` (its
    /// `cout` = this plan's `cin`) packed for this input-gradient plan:
    /// `w'[ci][co][i][j] = w[co][ci][k-1-i][k-1-j]`.
    pub fn pack_flipped_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        // the forward convolution's cout is this plan's cin
        self.pack_weights(&super::conv::flip_kernel(w, self.cin, self.cout, self.k), packed);
    }

    /// `out[co][oh][ow] = bias[co] + Σ w·xp` for one padded input `xp`
    /// ([`Self::pad_input`]) and weights packed by [`Self::pack_weights`]
    /// (or [`Self::pack_flipped_weights`]) under the same ISA.
    pub fn run(&self, packed: &[f32], bias: Option<&[f32]>, xp: &[f32], out: &mut [f32]) {
        self.run_rows(packed, bias, xp, 0..self.output_hw().0, out);
    }

    /// [`Self::run`] for the output rows `rows` only, into `out` holding
    /// `cout` planes of just those rows (`cout·rows.len()·wo` values): a
    /// caller may split one image's rows across threads, and every value
    /// is computed by the same tile either way.
    pub fn run_rows(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        xp: &[f32],
        rows: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let (ho, wo) = self.output_hw();
        assert!(packed.len() == self.packed_len() && xp.len() >= self.padded_len(), "conv_channels: sizes");
        assert!(rows.start <= rows.end && rows.end <= ho, "conv_channels: rows {rows:?} of {ho}");
        assert!(
            out.len() == self.cout * rows.len() * wo && bias.is_none_or(|b| b.len() == self.cout),
            "conv_channels: sizes"
        );
        let (shapes, lanes) = tiles();
        assert!(
            crate::isa::avx2() && lanes == self.lanes && shapes.contains(&(self.v, self.p)),
            "conv_channels::run: planned for another ISA"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the level (asserted above); the sizes are
        // checked above, and a tile's reads stay inside padded_len(): the
        // last row's last tile reads at most (P_MAX - 1)·stride + k - 1
        // values past its row's start
        unsafe {
            if crate::isa::avx512() {
                avx512::run(self, packed, bias, xp, rows, out)
            } else {
                avx2::run(self, packed, bias, xp, rows, out)
            }
        }
    }
}

/// The kernel for one ISA: its module name, `#[target_feature]` list,
/// vector type and lanes, register tiles (vectors, positions), and
/// intrinsics.
macro_rules! channels_kernel {
    ($isa:ident, $features:literal, $vec:ty, $lanes:literal, [$(($v:literal, $p:literal)),+],
     $set1:ident, $load:ident, $fma:ident, $zero:ident, $transpose:path, $store_n:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Plan;

            /// The register tiles (vectors of channels, positions) this kernel has.
            pub const TILES: &[(usize, usize)] = &[$(($v, $p)),+];

            /// [`Plan::run_rows`] with the plan's tile.
            ///
            /// # Safety
            /// The CPU has the module's features; the sizes checked by the caller.
            #[target_feature(enable = $features)]
            pub unsafe fn run(
                plan: &Plan,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                rows: std::ops::Range<usize>,
                out: &mut [f32],
            ) {
                // SAFETY: the caller's guarantees, passed on
                unsafe {
                    match (plan.v, plan.p, plan.stride) {
                        $(
                            ($v, $p, 1) => run_tiles::<$v, $p, 1>(plan, packed, bias, xp, rows, out),
                            ($v, $p, 2) => run_tiles::<$v, $p, 2>(plan, packed, bias, xp, rows, out),
                        )+
                        other => unreachable!("conv_channels: no {other:?} tile at {}", stringify!($isa)),
                    }
                }
            }

            /// [`run`] with tiles of `V` vectors of channels, `P` positions
            /// and stride `S`.
            ///
            /// # Safety
            /// As [`run`]; `plan.v == V`, `plan.p == P`, `plan.stride == S`.
            #[target_feature(enable = $features)]
            unsafe fn run_tiles<const V: usize, const P: usize, const S: usize>(
                plan: &Plan,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                rows: std::ops::Range<usize>,
                out: &mut [f32],
            ) {
                let block = V * $lanes;
                let wo = plan.output_hw().1;
                let (wp, kk) = (plan.wp(), plan.k * plan.k);
                let block_len = plan.cin * kk * block;
                let out_plane = rows.len() * wo;
                for co0 in (0..plan.cout).step_by(block) {
                    let weights = packed.as_ptr().add(co0 / block * block_len);
                    let valid = block.min(plan.cout - co0);
                    let init: [$vec; V] = std::array::from_fn(|v| {
                        let mut lanes = [0.0f32; $lanes];
                        if let Some(b) = bias {
                            for (l, value) in lanes.iter_mut().enumerate() {
                                *value = b.get(co0 + v * $lanes + l).copied().unwrap_or(0.0);
                            }
                        }
                        $load(lanes.as_ptr())
                    });
                    let y = out.as_mut_ptr().add(co0 * out_plane);
                    for oh in rows.clone() {
                        for ow0 in (0..wo).step_by(P) {
                            // SAFETY: reads as run_rows() states; the stores reach
                            // channel co0 + valid - 1 < cout, row oh - rows.start
                            // < rows.len(), column < wo
                            unsafe {
                                tile::<V, P, S>(
                                    plan,
                                    weights,
                                    init,
                                    xp.as_ptr().add(oh * S * wp + ow0 * S),
                                    y.add((oh - rows.start) * wo + ow0),
                                    out_plane,
                                    valid,
                                    P.min(wo - ow0),
                                )
                            };
                        }
                    }
                }
            }

            /// One register tile: for `c < valid_c`, `p < valid_p`,
            /// `y[c·out_plane + p] = init[c] + Σ_{ci,i,j} w[ci][i][j][c] · x[ci·plane + i·wp + p·S + j]`.
            ///
            /// # Safety
            /// The module's features; `w` readable for `cin·k·k·V·lanes`
            /// values, `x` for `(cin-1)·plane + (k-1)·wp + (P-1)·S + k`,
            /// `y` writable at those outputs.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn tile<const V: usize, const P: usize, const S: usize>(
                plan: &Plan,
                w: *const f32,
                init: [$vec; V],
                x: *const f32,
                y: *mut f32,
                out_plane: usize,
                valid_c: usize,
                valid_p: usize,
            ) {
                let (k, wp, plane) = (plan.k, plan.wp(), plan.plane());
                let mut acc: [[$vec; V]; P] = [init; P];
                let mut w = w;
                for ci in 0..plan.cin {
                    let base = x.add(ci * plane);
                    for i in 0..k {
                        let row = base.add(i * wp);
                        for j in 0..k {
                            let src = row.add(j);
                            let wv: [$vec; V] = std::array::from_fn(|v| $load(w.add(v * $lanes)));
                            w = w.add(V * $lanes);
                            for (p, sums) in acc.iter_mut().enumerate() {
                                let xv = $set1(*src.add(p * S));
                                for (a, &wv) in sums.iter_mut().zip(&wv) {
                                    *a = $fma(wv, xv, *a);
                                }
                            }
                        }
                    }
                }
                // the transpose: lanes (channels) out to planes, positions
                // contiguous, a register block of `lanes` positions at a
                // time; from a copy, so that nothing below takes the
                // accumulators' address (once it did, LLVM kept them in
                // memory through the loop above: a store per multiply-add)
                let done = acc;
                for v in 0..V {
                    for p0 in (0..valid_p).step_by($lanes) {
                        let mut r = [$zero(); $lanes];
                        for (t, value) in r.iter_mut().enumerate() {
                            if p0 + t >= P {
                                break;
                            }
                            *value = done[p0 + t][v];
                        }
                        let n = (valid_p - p0).min($lanes);
                        for (l, &value) in $transpose(r).iter().enumerate() {
                            let c = v * $lanes + l;
                            if c >= valid_c {
                                break;
                            }
                            $store_n(y.add(c * out_plane + p0), value, n);
                        }
                    }
                }
            }
        }
    };
}

// AVX-512's register tiles (vectors of channels, positions): up to 26 of
// its 32 registers hold sums, the rest a tap's weights and a broadcast.
// Tiles of 28 sums (4x7, 2x14) left the compiler short of registers: it
// kept sums on the stack, and vgg-bn's 14x14 and 7x7 layers ran at
// 0.9-1.1x the padded planes instead of 1.1-1.3x.
channels_kernel!(
    avx512,
    "avx512f,avx512bw,avx512dq,avx512vl,fma",
    __m512,
    16,
    [(4, 6), (4, 5), (4, 4), (3, 8), (2, 13), (2, 12), (2, 10), (2, 8), (2, 7), (1, 24), (1, 16), (1, 14), (1, 8)],
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_setzero_ps,
    super::super::image_lanes::transpose16,
    super::super::image_lanes::store_first16
);

// AVX2's: 12 of its 16 registers hold sums.
channels_kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    [(2, 6), (2, 5), (2, 4), (2, 3), (1, 12), (1, 10), (1, 8), (1, 7)],
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_setzero_ps,
    super::super::image_lanes::transpose8,
    super::super::image_lanes::store_first8
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::reference::{close, forward, input_grad, values};

    /// Forward (strides 1 and 2) and input gradient against im2col + matrix
    /// product (+ col2im), over kernel sizes 1/3/5/7, paddings 0 to k-1,
    /// channel counts around the vectors' 8 and 16, rows narrower and wider
    /// than a tile, and every tile of the ISA (rows split in two too).
    #[test]
    fn matches_im2col_and_the_matrix_product() {
        if !crate::isa::avx2() {
            eprintln!("conv_channels: skipped, this CPU (or NORMLAB_ISA) has no AVX2");
            return;
        }
        let mut used = std::collections::BTreeSet::new();
        let shapes = [
            (3, 16, 7, 9, 3, 1, 1),
            (5, 17, 12, 11, 3, 1, 1),
            (8, 32, 28, 28, 3, 1, 1),
            (16, 33, 6, 6, 3, 0, 1),
            (2, 64, 10, 10, 5, 2, 1),
            (4, 16, 9, 8, 7, 3, 1),
            (9, 20, 5, 5, 1, 0, 1),
            (16, 32, 16, 16, 3, 1, 2),
            (16, 32, 16, 16, 1, 0, 2),
            (8, 64, 15, 13, 3, 1, 2),
            (3, 16, 32, 32, 3, 1, 1),
            (16, 128, 7, 7, 3, 1, 1),
            (32, 64, 8, 8, 3, 1, 1),
            (16, 64, 4, 4, 3, 1, 1),
            (16, 48, 20, 20, 3, 1, 1),
            (24, 16, 24, 24, 3, 1, 1),
            (16, 16, 12, 12, 3, 1, 1),
            (16, 16, 10, 10, 3, 1, 1),
            (16, 32, 5, 5, 3, 1, 1),
        ];
        for (cin, cout, h, w, k, pad, stride) in shapes {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: k, stride, padding: pad };
            let (ho, wo) = g.output_hw().unwrap();
            let (x, wt, bias) = (values(cin * h * w, 1), values(cout * cin * k * k, 2), values(cout, 3));
            let what = format!("cin {cin} cout {cout} {h}x{w} k {k} pad {pad} stride {stride}");
            let want = forward(&g, cout, &x, &wt, &bias);
            assert!(applies::<f32>(&g, cout), "{what}");
            let plan = Plan::forward(&g, cout);
            used.insert((plan.v, plan.p));
            let (mut packed, mut xp) = (Vec::new(), vec![f32::NAN; plan.padded_len()]);
            plan.pack_weights(&wt, &mut packed);
            plan.pad_input(&x, &mut xp);
            let mut y = vec![f32::NAN; cout * ho * wo];
            plan.run(&packed, Some(&bias), &xp, &mut y);
            close(&y, &want, &format!("forward, {what}"));
            // the rows in two runs, as threads split them
            let half = ho / 2;
            let (mut top, mut bottom) = (vec![f32::NAN; cout * half * wo], vec![f32::NAN; cout * (ho - half) * wo]);
            plan.run_rows(&packed, Some(&bias), &xp, 0..half, &mut top);
            plan.run_rows(&packed, Some(&bias), &xp, half..ho, &mut bottom);
            for (c, plane) in y.chunks_exact_mut(ho * wo).enumerate() {
                let (a, b) = plane.split_at_mut(half * wo);
                a.copy_from_slice(&top[c * half * wo..(c + 1) * half * wo]);
                b.copy_from_slice(&bottom[c * (ho - half) * wo..(c + 1) * (ho - half) * wo]);
            }
            close(&y, &want, &format!("forward in two runs of rows, {what}"));
            if !input_grad_applies::<f32>(&g, cout) {
                continue;
            }
            let dy = values(cout * ho * wo, 4);
            let want_dx = input_grad(&g, cout, &wt, &dy);
            let back = Plan::input_grad(&g, cout).unwrap();
            let mut dyp = vec![f32::NAN; back.padded_len()];
            back.pack_flipped_weights(&wt, &mut packed);
            back.pad_input(&dy, &mut dyp);
            let mut dx = vec![f32::NAN; cin * h * w];
            back.run(&packed, None, &dyp, &mut dx);
            close(&dx, &want_dx, &format!("input gradient, {what}"));
        }
        eprintln!("conv_channels at {}: tiles {used:?}", crate::isa::active());
    }
}
