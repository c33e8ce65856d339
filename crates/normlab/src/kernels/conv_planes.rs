//! Direct convolution with stride 1, any kernel size and padding, on
//! zero-padded planes read as flat runs (f32, AVX-512). It serves the
//! forward pass and, on the gradient padded the other way with the kernel
//! flipped, the input gradient; no im2col matrix (`Cin·k·k` copies of the
//! input) is written or read.
//!
//! Forward: `y[co][oh][ow] = b[co] + Σ_{ci,i,j} w[co][ci][i][j] · xp[ci][oh+i][ow+j]`,
//! `xp` the input with `p` zeros on each side (`Hp = H + 2p`, `Wp = W + 2p`).
//!
//! Flat runs: with `q = oh·Wp + ow`, `xp[ci][oh+i][ow+j]` is
//! `xp[ci][q + i·Wp + j]` of the flattened plane, so one tap `(ci, i, j)`
//! reads a contiguous run for a whole block of outputs. The positions
//! `ow ≥ Wo` of each row (`k - 1` of every `Wp`) are computed and
//! dropped: cheaper than breaking the runs at each row.
//!
//! Register tile: `CB` output channels times `NV` vectors of positions;
//! per tap, `NV` loads of the input run and `CB` broadcast weights feed
//! `CB·NV` multiply-adds. AVX-512: 8 x 3 vectors of 16 (24 of its 32
//! registers); AVX2: 6 x 2 vectors of 8 (12 of its 16; a 4 x 3 tile left
//! no register free and ran at 0.6x of the matrix product). On small
//! planes a fixed tile computes many positions past the plane (7x7 with
//! padding 1: 63 positions, two tiles of 48): AVX-512 then picks, per
//! plan, the tile among 8 x 3, 6 x 4, 5 x 5 and 12 x 2 that computes the
//! fewest values ([`Plan::forward`]; 6 x 4 covers 7x7's 63 positions
//! with one tile). Blocks of
//! positions are the outer loop, so a block's input runs (`Cin` runs of
//! about `NV·lanes + (k-1)·(Wp+1)` values) stay in L1 while every block of
//! output channels passes over them.
//!
//! Input gradient: `dx[ci][y][x] = Σ_{co,i,j} w[co][ci][i][j] · dy[co][y+p-i][x+p-j]`
//! is the same sum as a forward pass over `dy` padded by `k - 1 - p`, with
//! weights `w'[ci][co][i][j] = w[co][ci][k-1-i][k-1-j]` ([`Plan::input_grad`]).
//!
//! Weight gradient: `dw[co][ci][i][j] = Σ_q dyw[co][q] · xp[ci][q + i·Wp + j]`
//! over `q = oh·Wp + ow`, with `dyw` the output gradient laid out in the
//! same padded rows and zero in the dropped positions ([`Plan::widen_grad`]),
//! so each tap is again one run of the padded input. Register tile: `WCO`
//! output channels times `WTAPS` taps (2 or, from 32 output channels on,
//! 3 x 9 at AVX-512; 3 x 3 at AVX2,
//! whose 16 registers hold no more than 9 accumulators and 4 loaded
//! vectors), each accumulator a vector of positions, summed across the
//! lanes once per group of images ([`Plan::weight_grad`]). Each
//! accumulator's sum runs in the same order whatever the tile.
//!
//! The im2col + matrix-product path of `layers::conv2d` is the reference
//! these are tested against (to rounding: the sums run in another order).

use super::conv::ConvGeometry;

/// The most output positions a tile takes (AVX-512's 5 vectors of 16).
const TILE_MAX: usize = 5 * 16;

/// The output channels per tile of the default tile of the kernel
/// [`crate::isa::active`] picks: 8 with AVX-512, 6 with AVX2.
fn channel_block() -> usize {
    tiles().0.first().map_or(usize::MAX, |&(cb, _)| cb)
}

/// The register tiles (output channels, vectors of positions) and vector
/// lanes of the kernel [`crate::isa::active`] picks, the default first:
/// each ISA's list is the one its kernel module is instantiated with below
/// (AVX-512's tiles use 24 or 25 accumulators of its 32 registers, AVX2's
/// one 12 of its 16); none without x86-64 kernels.
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

/// The tile that computes the fewest values (positions rounded up to
/// whole tiles, times channels rounded up to whole blocks) for `positions`
/// output positions of `cout` channels; the first such, on a tie. All
/// tiles issue about one load per two multiply-adds, so the count of
/// computed values is their cost.
fn best_tile(positions: usize, cout: usize) -> (usize, usize) {
    let (shapes, lanes) = tiles();
    let cost = |&(cb, nv): &(usize, usize)| positions.div_ceil(nv * lanes) * nv * lanes * cout.div_ceil(cb) * cb;
    // without x86-64 kernels no plan runs; (1, 1) keeps its sizes defined
    let Some((&first, rest)) = shapes.split_first() else { return (1, 1) };
    let mut best = first;
    for shape in rest {
        if cost(shape) < cost(&best) {
            best = *shape;
        }
    }
    best
}

/// Whether the forward pass of this convolution runs here: f32 on AVX-512
/// or AVX2, stride 1, and at least a tile's output channels (fewer would
/// leave most of the tile idle). `dev/examples/conv_planes.rs`, one thread,
/// the suite's 3x3 padded shapes: 1.2-2.3x the speed of im2col + matrix
/// product at AVX-512.
pub fn applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.stride == 1
        && g.output_hw().is_some()
        && cout >= channel_block()
}

/// Whether the input gradient runs here: as [`applies`] for the dual
/// convolution (at least a tile's channels as input channels, padding
/// below the kernel size). With the tiles for small planes it beats
/// matrix product + col2im on every plane size (`dev/examples/conv_planes.rs`,
/// one thread, 3x3: 7x7 and 8x8 1.2-1.7x at AVX-512, 1.3-1.4x at AVX2;
/// 4x4 1.2x and 1.0x; 14x14 and up 1.3-1.8x).
pub fn input_grad_applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    applies::<T>(g, cout) && g.channels >= channel_block() && g.padding < g.kernel
}

/// Whether the weight gradient runs here: f32 on AVX-512 or AVX2, stride
/// 1, a kernel of 2 to 7 (a 1x1 kernel would fill a fraction of a tile's
/// taps and needs no im2col anyway). Each tile's sums end in a sum
/// across lanes, which on a small plane, over 8 images, cost as much as
/// the multiply-adds (7x7: 0.9x of im2col + matrix product): the sum stays
/// in registers, and `layers::conv2d` gives narrow planes groups of 32
/// images.
pub fn weight_grad_applies<T: 'static>(g: &ConvGeometry) -> bool {
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.stride == 1
        && g.output_hw().is_some()
        && (2..=7).contains(&g.kernel)
}

/// Vector lanes of the widest kernel: the wide gradient rows are padded to
/// a multiple of it, so every kernel reads whole vectors.
const MAX_LANES: usize = 16;

/// The shape of one direct convolution: `cin` planes of `h×w` padded by
/// `pad`, a `k×k` kernel, `cout` output planes of `ho×wo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pad: usize,
    pub cout: usize,
    /// Output channels and vectors of positions per register tile (one of
    /// the active ISA's tiles).
    cb: usize,
    nv: usize,
}

impl Plan {
    /// The forward pass of a convolution of geometry `g` with stride 1.
    pub fn forward(g: &ConvGeometry, cout: usize) -> Plan {
        Plan::with_best_tile(g.channels, g.height, g.width, g.kernel, g.padding, cout)
    }

    /// The plan with the tile [`best_tile`] picks for its positions.
    fn with_best_tile(cin: usize, h: usize, w: usize, k: usize, pad: usize, cout: usize) -> Plan {
        let plan = Plan { cin, h, w, k, pad, cout, cb: 0, nv: 0 };
        let (cb, nv) = best_tile(plan.output_hw().0 * plan.wp(), cout);
        Plan { cb, nv, ..plan }
    }

    /// Its input gradient, as a forward pass over `dy` (`cout` planes of
    /// the forward's output size, padded by `k - 1 - p`) into `cin` planes.
    pub fn input_grad(g: &ConvGeometry, cout: usize) -> Option<Plan> {
        let (ho, wo) = g.output_hw()?;
        let pad = (g.kernel - 1).checked_sub(g.padding)?;
        Some(Plan::with_best_tile(cout, ho, wo, g.kernel, pad, g.channels))
    }

    fn wp(&self) -> usize {
        self.w + 2 * self.pad
    }

    fn plane(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp()
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        (self.h + 2 * self.pad + 1 - self.k, self.w + 2 * self.pad + 1 - self.k)
    }

    /// Values of one padded input ([`Self::pad_input`]): the planes and
    /// room for the last tile's reads past the end (dropped positions).
    pub fn padded_len(&self) -> usize {
        self.cin * self.plane() + TILE_MAX + self.k * (self.wp() + 1)
    }

    /// Values of the packed weights ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        self.cout.div_ceil(self.cb) * self.cin * self.k * self.k * self.cb
    }

    /// `x` (`cin` planes of `h×w`) into `xp` with `pad` zeros around each plane.
    pub fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
        assert!(xp.len() >= self.padded_len(), "pad_input: sizes");
        super::conv::pad_planes(x, (self.cin, self.h, self.w), self.pad, xp);
    }

    /// Forward weights `w[co][ci][i][j]` into tiles `packed[block][ci][i][j][c]`
    /// (`co = block·cb + c`, `cb` the tile's channels), zero past `cout`.
    pub fn pack_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        let kk = self.k * self.k;
        assert_eq!(w.len(), self.cout * self.cin * kk, "pack_weights: weight size");
        packed.clear();
        packed.resize(self.packed_len(), 0.0);
        for co in 0..self.cout {
            let (block, c) = (co / self.cb, co % self.cb);
            for ci in 0..self.cin {
                for t in 0..kk {
                    packed[((block * self.cin + ci) * kk + t) * self.cb + c] = w[(co * self.cin + ci) * kk + t];
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

    /// Values of one image's output gradient in padded rows
    /// ([`Self::widen_grad`]): `cout` planes of `ho·wp`, each rounded up to
    /// whole vectors.
    pub fn wide_len(&self) -> usize {
        let (ho, _) = self.output_hw();
        self.cout * (ho * self.wp()).div_ceil(MAX_LANES) * MAX_LANES
    }

    /// One image's output gradient `dy` (`cout` planes of `ho×wo`) into
    /// `dyw` in the padded input's rows (`wp` wide), zero in the dropped
    /// positions and past each plane's end.
    pub fn widen_grad(&self, dy: &[f32], dyw: &mut [f32]) {
        let ((ho, wo), wp) = (self.output_hw(), self.wp());
        let plane = self.wide_len() / self.cout;
        assert!(dy.len() == self.cout * ho * wo && dyw.len() == self.wide_len(), "widen_grad: sizes");
        dyw.fill(0.0);
        for (src, dst) in dy.chunks_exact(ho * wo).zip(dyw.chunks_exact_mut(plane)) {
            for (r, row) in src.chunks_exact(wo).enumerate() {
                dst[r * wp..r * wp + wo].copy_from_slice(row);
            }
        }
    }

    /// The weight gradient of `images` images, overwritten into `dw`
    /// (`cout·cin·k·k`, PyTorch's layout): `xps` holds the images' padded
    /// inputs ([`Self::pad_input`], `padded_len` apart) and `dyws` their
    /// output gradients ([`Self::widen_grad`], `wide_len` apart). The sums
    /// run over the images' positions in vector lanes, then across the
    /// lanes in a fixed order. Needs AVX2 ([`crate::isa::avx2`]).
    pub fn weight_grad(&self, images: usize, xps: &[f32], dyws: &[f32], dw: &mut [f32]) {
        let (k, kk) = (self.k, self.k * self.k);
        assert!((2..=7).contains(&k), "conv_planes::weight_grad: kernel {k}");
        assert!(
            xps.len() >= images * self.padded_len() && dyws.len() >= images * self.wide_len(),
            "conv_planes::weight_grad: sizes"
        );
        assert_eq!(dw.len(), self.cout * self.cin * kk, "conv_planes::weight_grad: weight size");
        assert!(crate::isa::avx2(), "conv_planes::weight_grad needs AVX2");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the level (asserted above); a tile reads its
        // plane's positions below wide_len/cout plus a tap's offset, at most
        // (k-1)·(wp+1), past the start of the plane: inside padded_len()
        // (TILE_MAX ≥ MAX_LANES of slack past the planes)
        unsafe {
            if crate::isa::avx512() {
                avx512::weight_grad(self, images, xps, dyws, dw)
            } else {
                avx2::weight_grad(self, images, xps, dyws, dw)
            }
        }
    }

    /// `out[co][oh][ow] = bias[co] + Σ w·xp` for one padded input `xp`
    /// ([`Self::pad_input`]) and weights packed by [`Self::pack_weights`]
    /// (or [`Self::pack_flipped_weights`]) under the same ISA. Needs AVX2
    /// ([`crate::isa::avx2`]).
    /// `rows` is scratch, resized as needed (the output as padded rows).
    pub fn run(&self, packed: &[f32], bias: Option<&[f32]>, xp: &[f32], out: &mut [f32], rows: &mut Vec<f32>) {
        let (ho, wo) = self.output_hw();
        assert!(packed.len() == self.packed_len() && xp.len() >= self.padded_len(), "conv_planes: sizes");
        assert!(out.len() == self.cout * ho * wo && bias.is_none_or(|b| b.len() == self.cout), "conv_planes: sizes");
        assert!(
            crate::isa::avx2() && tiles().0.contains(&(self.cb, self.nv)),
            "conv_planes::run: planned for another ISA"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the level (asserted above); the sizes are
        // checked above and every read of a tile stays inside padded_len()
        unsafe {
            if crate::isa::avx512() {
                avx512::run(self, packed, bias, xp, out, rows)
            } else {
                avx2::run(self, packed, bias, xp, out, rows)
            }
        }
        // the assertion above fails first: no kernels here
        #[cfg(not(target_arch = "x86_64"))]
        let _ = rows;
    }
}

/// The kernel for one ISA: its module name, `#[target_feature]` list,
/// vector type and lanes, register tiles (channels, vectors), channels
/// and taps per weight-gradient tile, intrinsics, and the sum across lanes.
macro_rules! planes_kernel {
    ($isa:ident, $features:literal, $vec:ty, $lanes:literal, [$(($cb:literal, $nv:literal)),+], $wco:expr, $wco_wide:expr, $wtaps:expr,
     $set1:ident, $load:ident, $fma:ident, $store:ident, $lane_sum:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Plan;

            /// The register tiles (output channels, vectors) this kernel has.
            pub const TILES: &[(usize, usize)] = &[$(($cb, $nv)),+];

            /// Taps per weight-gradient tile.
            const WTAPS: usize = $wtaps;

            /// [`Plan::run`] with the plan's tile, one of this module's.
            ///
            /// # Safety
            /// The CPU has the module's features (the caller checked [`crate::isa`]).
            #[target_feature(enable = $features)]
            pub unsafe fn run(
                plan: &Plan,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                out: &mut [f32],
                rows: &mut Vec<f32>,
            ) {
                // SAFETY: the caller's guarantees, passed on
                unsafe {
                    match (plan.cb, plan.nv) {
                        $(($cb, $nv) => run_tiles::<$cb, $nv>(plan, packed, bias, xp, out, rows),)+
                        other => unreachable!("conv_planes: no {other:?} tile at {}", stringify!($isa)),
                    }
                }
            }

            /// [`run`] with tiles of `CB` channels and `NV` vectors.
            ///
            /// # Safety
            /// As [`run`]; `plan.cb == CB`.
            #[target_feature(enable = $features)]
            unsafe fn run_tiles<const CB: usize, const NV: usize>(
                plan: &Plan,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                out: &mut [f32],
                rows: &mut Vec<f32>,
            ) {
                let tile = NV * $lanes;
                let (ho, wo) = plan.output_hw();
                let (wp, plane, kk) = (plan.wp(), plan.plane(), plan.k * plan.k);
                let positions = ho * wp;
                let tiles = positions.div_ceil(tile);
                let block_len = plan.cin * kk * CB;
                // the output as whole padded rows (ho·wp per channel, then the last
                // tile's overhang), each tile stored with plain vector stores; the
                // first wo of every row are then copied out
                let stride = tiles * tile;
                rows.clear();
                rows.resize(packed.len() / (plan.cin * kk) * stride, 0.0);
                for q0 in (0..positions).step_by(tile) {
                    for (block, weights) in packed.chunks_exact(block_len).enumerate() {
                        let co0 = block * CB;
                        let init: [f32; CB] =
                            std::array::from_fn(|c| bias.and_then(|b| b.get(co0 + c).copied()).unwrap_or(0.0));
                        // SAFETY: the reads reach q0 + tile - 1 + (k-1)·(wp+1) of the
                        // last plane at most, inside padded_len() (tile ≤ TILE_MAX); the
                        // stores reach (co0 + CB - 1)·stride + q0 + tile ≤ rows.len()
                        unsafe {
                            tile_sums::<CB, NV>(
                                plan,
                                weights,
                                init,
                                xp.as_ptr().add(q0),
                                plane,
                                rows.as_mut_ptr().add(co0 * stride + q0),
                                stride,
                            )
                        };
                    }
                }
                for (dst, src) in out.chunks_exact_mut(ho * wo).zip(rows.chunks_exact(stride)) {
                    for (d, s) in dst.chunks_exact_mut(wo).zip(src.chunks_exact(wp)) {
                        d.copy_from_slice(&s[..wo]);
                    }
                }
            }

            /// [`Plan::weight_grad`] with this module's tile for the plan:
            /// the wider one from 32 output channels on, the narrower one
            /// under (where the wider would leave more of its last tile
            /// unused: 16 channels in tiles of 3).
            ///
            /// # Safety
            /// The module's features; the sizes checked by [`Plan::weight_grad`].
            #[target_feature(enable = $features)]
            pub unsafe fn weight_grad(plan: &Plan, images: usize, xps: &[f32], dyws: &[f32], dw: &mut [f32]) {
                // SAFETY: the caller's guarantees, passed on
                unsafe {
                    if plan.cout >= 32 {
                        weight_grad_tiles::<{ $wco_wide }>(plan, images, xps, dyws, dw)
                    } else {
                        weight_grad_tiles::<{ $wco }>(plan, images, xps, dyws, dw)
                    }
                }
            }

            /// The weight gradient in tiles of `WCO` output
            /// channels × `WTAPS` taps of one input channel, each accumulator a
            /// vector of positions, over every image, then summed across
            /// lanes. A tile's missing channels or taps (past `cout`, past
            /// `k·k`) compute on valid data and are not stored.
            ///
            /// # Safety
            /// The module's features; the sizes checked by [`Plan::weight_grad`].
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_tiles<const WCO: usize>(
                plan: &Plan,
                images: usize,
                xps: &[f32],
                dyws: &[f32],
                dw: &mut [f32],
            ) {
                let (k, wp, plane, kk) = (plan.k, plan.wp(), plan.plane(), plan.k * plan.k);
                let (padded, wide) = (plan.padded_len(), plan.wide_len());
                let wide_plane = wide / plan.cout;
                let vectors = wide_plane / $lanes;
                for co0 in (0..plan.cout).step_by(WCO) {
                    // a missing channel repeats the last one (not stored)
                    let chans: [usize; WCO] = std::array::from_fn(|c| (co0 + c).min(plan.cout - 1));
                    for ci in 0..plan.cin {
                        for t0 in (0..kk).step_by(WTAPS) {
                            // a missing tap reads offset 0 (not stored)
                            let offsets: [usize; WTAPS] = std::array::from_fn(|t| {
                                let tap = t0 + t;
                                if tap < kk {
                                    (tap / k) * wp + tap % k
                                } else {
                                    0
                                }
                            });
                            let mut acc: [[$vec; WTAPS]; WCO] = [[$set1(0.0); WTAPS]; WCO];
                            for img in 0..images {
                                let x = xps.as_ptr().add(img * padded + ci * plane);
                                let d = dyws.as_ptr().add(img * wide);
                                for v in 0..vectors {
                                    let q = v * $lanes;
                                    let dv: [$vec; WCO] =
                                        std::array::from_fn(|c| $load(d.add(chans[c] * wide_plane + q)));
                                    for (t, &off) in offsets.iter().enumerate() {
                                        let xv = $load(x.add(q + off));
                                        for c in 0..WCO {
                                            acc[c][t] = $fma(dv[c], xv, acc[c][t]);
                                        }
                                    }
                                }
                            }
                            // read from a copy, as in conv_channels' tile
                            let done = acc;
                            for (c, row) in done.iter().enumerate() {
                                let co = co0 + c;
                                if co >= plan.cout {
                                    break;
                                }
                                for (t, &a) in row.iter().enumerate().take(kk.saturating_sub(t0)) {
                                    dw[(co * plan.cin + ci) * kk + t0 + t] = $lane_sum(a);
                                }
                            }
                        }
                    }
                }
            }

            /// One register tile: `y[c·stride + t] = init[c] + Σ_{ci,i,j} w[c][ci][i][j] · x[ci·plane + t + i·wp + j]`
            /// for `t` in `0..NV·lanes`.
            ///
            /// # Safety
            /// The module's features; `x` readable for `(cin-1)·plane + NV·lanes + (k-1)·(wp+1)`
            /// values, `y` writable at `c·stride + t` for every `c < CB`, `t < NV·lanes`.
            #[target_feature(enable = $features)]
            unsafe fn tile_sums<const CB: usize, const NV: usize>(
                plan: &Plan,
                weights: &[f32],
                init: [f32; CB],
                x: *const f32,
                plane: usize,
                y: *mut f32,
                stride: usize,
            ) {
                let (k, wp) = (plan.k, plan.wp());
                let mut acc: [[$vec; NV]; CB] = std::array::from_fn(|c| [$set1(init[c]); NV]);
                let mut w = weights.as_ptr();
                for ci in 0..plan.cin {
                    let base = x.add(ci * plane);
                    for i in 0..k {
                        for j in 0..k {
                            let src = base.add(i * wp + j);
                            let xs: [$vec; NV] = std::array::from_fn(|v| $load(src.add($lanes * v)));
                            for (c, row) in acc.iter_mut().enumerate() {
                                let wv = $set1(*w.add(c));
                                for (a, &xv) in row.iter_mut().zip(&xs) {
                                    *a = $fma(wv, xv, *a);
                                }
                            }
                            w = w.add(CB);
                        }
                    }
                }
                // read from a copy, as in conv_channels' tile
                let done = acc;
                for (c, row) in done.iter().enumerate() {
                    for (v, &a) in row.iter().enumerate() {
                        $store(y.add(c * stride + $lanes * v), a);
                    }
                }
            }
        }
    };
}

/// A vector's lanes added in a fixed order, in registers: lane `l` to
/// lane `l + 8` (AVX-512 only), then the eight sums as
/// [`crate::kernels::lanes::sum8`] adds them,
/// `((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7))`. The same value
/// as storing the lanes and adding them in that order, at a few
/// instructions instead of sixteen scalar adds: on a small plane the
/// weight gradient sums across lanes once per dozens of multiply-adds.
#[cfg(target_arch = "x86_64")]
mod lane_sums {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub unsafe fn sum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        // (s0 + s1, s1 + s0, s2 + s3, s3 + s2), then the first pair plus the second
        let pairs = _mm_add_ps(s, _mm_shuffle_ps::<0b10_11_00_01>(s, s));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehl_ps(pairs, pairs)))
    }

    /// # Safety
    /// The CPU has AVX-512 F and DQ.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    pub unsafe fn sum16(v: __m512) -> f32 {
        // SAFETY: AVX-512 includes AVX2
        unsafe { sum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v))) }
    }
}

planes_kernel!(
    avx512,
    "avx512f,avx512bw,avx512dq,avx512vl,fma",
    __m512,
    16,
    [(8, 3), (6, 4), (5, 5), (12, 2)],
    2,
    3,
    9,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps,
    super::lane_sums::sum16
);
planes_kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    [(6, 2)],
    3,
    3,
    3,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps,
    super::lane_sums::sum8
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col;
    use crate::kernels::conv::reference::{close, forward, input_grad, values};
    use crate::kernels::gemm::{gemm, Product};

    /// Forward and input gradient against im2col + matrix product (+ col2im),
    /// over kernel sizes 1/3/5/7, paddings 0 to k-1, channel counts around
    /// the tile's 8, and planes narrower and wider than a tile.
    #[test]
    fn matches_im2col_and_the_matrix_product() {
        if !crate::isa::avx2() {
            eprintln!("conv_planes: skipped, this CPU (or NORMLAB_ISA) has no AVX2");
            return;
        }
        // the odd shapes, then small planes (4x4, 7x7, 8x8) with 3x3 and 5x5
        // kernels and "same" padding, whose tiles the plan picks by size
        let small = [(1, 16), (3, 33), (16, 64), (33, 3), (64, 1), (16, 64)]
            .into_iter()
            .zip([3, 5].into_iter().cycle().take(6))
            .flat_map(|((cin, cout), k)| [4, 7, 8].map(|hw| (cin, cout, hw, hw, k, k / 2)))
            .chain([(64, 64, 4, 4, 3, 1), (64, 64, 4, 4, 5, 2)]);
        let mut tiles_used = std::collections::BTreeSet::new();
        for (cin, cout, h, w, k, pad) in [
            (3, 8, 7, 9, 3, 1),
            (5, 13, 12, 11, 3, 1),
            (8, 16, 28, 28, 3, 1),
            (16, 9, 6, 6, 3, 0),
            (2, 17, 10, 10, 5, 2),
            (4, 8, 9, 8, 7, 3),
            (9, 20, 5, 5, 1, 0),
            (3, 8, 4, 4, 3, 2),
            (6, 8, 9, 9, 2, 1),
        ]
        .into_iter()
        .chain(small)
        {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: k, stride: 1, padding: pad };
            let (ho, wo) = g.output_hw().unwrap();
            let (x, wt, bias) = (values(cin * h * w, 1), values(cout * cin * k * k, 2), values(cout, 3));
            let what = format!("cin {cin} cout {cout} {h}x{w} k {k} pad {pad}");

            let want = forward(&g, cout, &x, &wt, &bias);
            let plan = Plan::forward(&g, cout);
            tiles_used.insert((plan.cb, plan.nv));
            let (mut packed, mut xp) = (Vec::new(), vec![f32::NAN; plan.padded_len()]);
            plan.pack_weights(&wt, &mut packed);
            plan.pad_input(&x, &mut xp);
            let mut y = vec![f32::NAN; cout * ho * wo];
            plan.run(&packed, Some(&bias), &xp, &mut y, &mut Vec::new());
            close(&y, &want, &format!("forward, {what}"));

            let dy = values(cout * ho * wo, 4);
            let want_dx = input_grad(&g, cout, &wt, &dy);
            let back = Plan::input_grad(&g, cout).unwrap();
            let mut dyp = vec![f32::NAN; back.padded_len()];
            back.pack_flipped_weights(&wt, &mut packed);
            back.pad_input(&dy, &mut dyp);
            let mut dx = vec![f32::NAN; cin * h * w];
            back.run(&packed, None, &dyp, &mut dx, &mut Vec::new());
            close(&dx, &want_dx, &format!("input gradient, {what}"));

            // weight gradient of two images (the second's input and gradient
            // other values) against the sum of their matrix products
            // the kernel on every shape it takes, small planes included
            if !(2..=7).contains(&k) {
                continue;
            }
            let (x2, dy2) = (values(cin * h * w, 5), values(cout * ho * wo, 6));
            let mut want_dw = vec![0.0f32; cout * g.col_rows()];
            let mut col = vec![0.0f32; g.col_rows() * ho * wo];
            for (img, (xi, dyi)) in [(&x, &dy), (&x2, &dy2)].into_iter().enumerate() {
                im2col(&g, xi, &mut col);
                gemm(Product::nt(cout, g.col_rows(), ho * wo), 1.0, dyi, &col, img as f32, &mut want_dw);
            }
            let (padded, wide) = (plan.padded_len(), plan.wide_len());
            let (mut xps, mut dyws) = (vec![f32::NAN; 2 * padded], vec![f32::NAN; 2 * wide]);
            for (img, (xi, dyi)) in [(&x, &dy), (&x2, &dy2)].into_iter().enumerate() {
                plan.pad_input(xi, &mut xps[img * padded..(img + 1) * padded]);
                plan.widen_grad(dyi, &mut dyws[img * wide..(img + 1) * wide]);
            }
            let mut dw = vec![f32::NAN; cout * g.col_rows()];
            plan.weight_grad(2, &xps, &dyws, &mut dw);
            close(&dw, &want_dw, &format!("weight gradient, {what}"));
        }
        let (shapes, _) = tiles();
        assert_eq!(tiles_used.len(), shapes.len(), "some tile of {} is never planned", crate::isa::active());
    }
}
