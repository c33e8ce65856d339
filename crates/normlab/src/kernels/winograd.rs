//! Winograd F(2x2, 3x3) convolution (f32, AVX-512 or AVX2): 3x3 kernels,
//! stride 1, any padding up to 2, output channels in the vector lanes.
//!
//! One output tile of 2x2 values comes from a 4x4 input tile `d` (tiles
//! overlap by 2). Per input channel, `V = Bᵀ d B`; per filter, `U = G g Gᵀ`;
//! per tile and output channel,
//!
//! `Y = Aᵀ [ Σ_ci U[co][ci] ⊙ V[ci] ] A`,
//!
//! with `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`,
//! `G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2016). The 16 element-wise products summed over `ci` are 16 matrix
//! products `M[ξ] = V[ξ]ᵀ·U[ξ]` (tiles × `Cin` times `Cin` × `Cout`): 16
//! multiply-adds per tile, channel pair where the direct convolution
//! (`conv_channels`) does 36, so 2.25x fewer; the transforms are additions
//! only (`G`'s halves are exact), done once per tile and channel.
//!
//! Layout: `V[ξ][ci][tile]` (tiles of a band of tile rows, contiguous so the
//! transform writes whole vectors), `U[block][ξ][ci][c]` (`V·lanes` output
//! channels a block). A register tile is `V` vectors of output channels
//! times `P` tiles of one tile row (the tiles of `conv_channels`: the
//! inner loop is the same, over `ci` instead of `(ci, i, j)`); its 16
//! products go to a small buffer, and the output transform turns them into
//! 2x2 outputs per tile and channel, stored transposed to the planes.
//!
//! Rounding: the transforms add at most four values twice, so the result
//! differs from the direct sums by a few ulps of the largest partial sums
//! (tested against im2col + matrix product to 1e-4 relative, like the
//! direct kernels).

use super::conv::ConvGeometry;
use super::conv_channels::best_tile_of;

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

/// Values of the transformed input a band of tile rows may take: bands are
/// cut so that `16·cin·tiles` stays under this (1 MB, the L2 cache of one
/// Zen 4 core), and `V` is read back from the cache.
const BAND_VALUES: usize = 1 << 18;

/// The most tiles a register tile takes (as `conv_channels`).
const P_MAX: usize = 28;

/// Whether this kernel runs a convolution: f32 on AVX-512 or AVX2, a 3x3
/// kernel with stride 1 and padding at most 2, and at least one vector of
/// output channels.
pub fn applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    f32_3x3_applies::<T>(g) && cout >= tiles().1
}

/// f32 with AVX2 or more, a 3x3 kernel, stride 1 and padding at most 2:
/// what F(2x2, 3x3) needs here, for any number of channels (the forward
/// pass, its input gradient and `winograd_grad`'s weight gradient).
pub(crate) fn f32_3x3_applies<T: 'static>(g: &ConvGeometry) -> bool {
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && g.kernel == 3
        && g.stride == 1
        && g.padding <= 2
        && g.output_hw().is_some()
}

/// Whether the input gradient runs here (the dual convolution: `dy` padded
/// by `2 - p` into `Cin` channels, which must fill a vector).
pub fn input_grad_applies<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    applies::<T>(g, cout) && g.channels >= tiles().1
}

/// Whether this kernel is the faster one for the forward pass. Measured one
/// image, one thread (`dev/examples/winograd.rs`, Zen 4): against
/// `conv_channels`, 1.16-1.93x at AVX-512 and 1.16-1.71x at AVX2 on the
/// suite's 3x3 layers with 8 to 128 input channels.
pub fn prefer<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    applies::<T>(g, cout) && g.channels >= 8
}

/// [`prefer`] for the input gradient: its dual sums over `Cout` into `Cin`
/// channels, and with fewer than two vectors of `Cin` (a layer that widens
/// 16 channels to 32) the register tile has one vector of channels, whose
/// broadcasts cost as much as its multiply-adds (0.86-1.09x).
pub fn prefer_input_grad<T: 'static>(g: &ConvGeometry, cout: usize) -> bool {
    input_grad_applies::<T>(g, cout) && (g.channels >= 2 * tiles().1 || g.channels >= cout)
}

/// The shape of one Winograd convolution: `cin` planes of `h×w` padded by
/// `pad`, `cout` output planes of `(h + 2·pad - 2) × (w + 2·pad - 2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub pad: usize,
    pub cout: usize,
    /// Vectors of channels and tiles per register tile (one of the active
    /// ISA's tiles).
    v: usize,
    p: usize,
    lanes: usize,
}

impl Plan {
    /// The forward pass of a convolution of geometry `g` ([`applies`]).
    pub fn forward(g: &ConvGeometry, cout: usize) -> Plan {
        assert!(g.kernel == 3 && g.stride == 1 && g.padding <= 2, "winograd: 3x3, stride 1, padding <= 2 only");
        Plan::with_best_tile(g.channels, g.height, g.width, g.padding, cout)
    }

    /// Its input gradient, as a forward pass over `dy` (`cout` planes of
    /// the forward's output size, padded by `2 - p`) with the kernel flipped,
    /// into `cin` planes.
    pub fn input_grad(g: &ConvGeometry, cout: usize) -> Plan {
        let (ho, wo) = g.output_hw().expect("winograd::Plan::input_grad: a convolution that fits");
        assert!(g.kernel == 3 && g.stride == 1 && g.padding <= 2, "winograd: 3x3, stride 1, padding <= 2 only");
        Plan::with_best_tile(cout, ho, wo, 2 - g.padding, g.channels)
    }

    fn with_best_tile(cin: usize, h: usize, w: usize, pad: usize, cout: usize) -> Plan {
        let lanes = tiles().1;
        let plan = Plan { cin, h, w, pad, cout, v: 1, p: 1, lanes };
        let (shapes, lanes) = tiles();
        let (v, p) = best_tile_of(shapes, lanes, plan.tiles_hw().1, cout);
        Plan { v, p, ..plan }
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        (self.h + 2 * self.pad - 2, self.w + 2 * self.pad - 2)
    }

    /// Tile rows and tiles per row: 2x2 outputs a tile, the last ones
    /// hanging past an odd edge.
    pub fn tiles_hw(&self) -> (usize, usize) {
        let (ho, wo) = self.output_hw();
        (ho.div_ceil(2), wo.div_ceil(2))
    }

    /// Width of a padded plane: `pad` zeros on the left, zeros past the
    /// input to the last tile's end.
    fn wp(&self) -> usize {
        2 * self.tiles_hw().1 + 2
    }

    fn plane(&self) -> usize {
        (2 * self.tiles_hw().0 + 2) * self.wp()
    }

    /// Output channels per register tile.
    fn block(&self) -> usize {
        self.v * self.lanes
    }

    /// Tile rows per band: as many as keep the transformed input under
    /// [`BAND_VALUES`], at least one.
    fn band_rows(&self) -> usize {
        let tw = self.tiles_hw().1;
        (BAND_VALUES / (16 * self.cin * tw)).max(1)
    }

    /// Tiles of a band's transformed input: its rows, plus room for a row's
    /// last register tile reading past the band's last tile.
    fn band_tiles(&self, rows: usize) -> usize {
        rows * self.tiles_hw().1 + P_MAX
    }

    /// Values from one ξ's transformed input to the next, for bands of
    /// `stride` tiles per channel: `cin·stride` rounded up to an odd number
    /// of cache lines, so that a tile's 16 values, one per ξ, fall in 16
    /// different sets of the L1 cache. A multiple of 4 KB (32 channels of
    /// 224 tiles make 28 KB) put them all in one 8-way set, where the input
    /// transform's stores evicted each other.
    fn xi_stride(&self, stride: usize) -> usize {
        ((self.cin * stride).div_ceil(16) | 1) * 16
    }

    /// Values of one padded input ([`Self::pad_input`]): the planes, and
    /// slack for the input transform's reads of a row's last vector of
    /// tiles past the row's end.
    pub fn padded_len(&self) -> usize {
        self.cin * self.plane() + 2 * 16 + 2
    }

    /// Values of the scratch [`Self::run_rows`] needs: one band's
    /// transformed input and a register tile's 16 products.
    pub fn scratch_len(&self) -> usize {
        let rows = self.band_rows().min(self.tiles_hw().0);
        16 * self.xi_stride(self.band_tiles(rows)) + 16 * P_MAX * self.block()
    }

    /// Values of the packed weights ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        self.cout.div_ceil(self.block()) * 16 * self.cin * self.block()
    }

    /// `x` (`cin` planes of `h×w`) into `xp`: `pad` zeros above and left,
    /// zeros below and right to the last tile's end.
    pub fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
        let (wp, plane) = (self.wp(), self.plane());
        assert!(x.len() == self.cin * self.h * self.w && xp.len() >= self.padded_len(), "winograd::pad_input: sizes");
        xp.fill(0.0);
        for (src, dst) in x.chunks_exact(self.h * self.w).zip(xp.chunks_exact_mut(plane)) {
            for (r, row) in src.chunks_exact(self.w).enumerate() {
                let at = (r + self.pad) * wp + self.pad;
                super::copy_row(&mut dst[at..at + self.w], row);
            }
        }
    }

    /// Weights `w[co][ci][3][3]` into `packed[block][ξ][ci][c]` =
    /// `(G g Gᵀ)[ξ]` of filter `(block·V·lanes + c, ci)`, zero past `cout`.
    /// The transform runs in f64 and rounds once.
    pub fn pack_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        assert_eq!(w.len(), self.cout * self.cin * 9, "winograd::pack_weights: weight size");
        let block = self.block();
        packed.clear();
        packed.resize(self.packed_len(), 0.0);
        for co in 0..self.cout {
            let (b, c) = (co / block, co % block);
            for ci in 0..self.cin {
                let g: [f32; 9] = w[(co * self.cin + ci) * 9..][..9].try_into().unwrap();
                for (xi, u) in transform_filter(&g).into_iter().enumerate() {
                    packed[((b * 16 + xi) * self.cin + ci) * block + c] = u as f32;
                }
            }
        }
    }

    /// The weights of the forward convolution `w[co][ci][3][3]` (its `cout`
    /// = this plan's `cin`), flipped and their channels swapped for this
    /// input-gradient plan.
    pub fn pack_flipped_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        self.pack_weights(&super::conv::flip_kernel(w, self.cin, self.cout, 3), packed);
    }

    /// `out[co][oh][ow] = bias[co] + Σ w·xp` for one padded input `xp`
    /// ([`Self::pad_input`]) and weights packed by [`Self::pack_weights`]
    /// under the same ISA.
    pub fn run(&self, packed: &[f32], bias: Option<&[f32]>, xp: &[f32], out: &mut [f32], scratch: &mut [f32]) {
        self.run_rows(packed, bias, xp, 0..self.tiles_hw().0, out, scratch);
    }

    /// The output rows of the tile rows `tile_rows` (`2·start` to
    /// `min(2·end, ho)`), into `out` holding `cout` planes of just those
    /// rows: a caller may split one image across threads, and every value
    /// is computed the same way either way.
    #[allow(clippy::too_many_arguments)]
    pub fn run_rows(
        &self,
        packed: &[f32],
        bias: Option<&[f32]>,
        xp: &[f32],
        tile_rows: std::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        let (ho, wo) = self.output_hw();
        let th = self.tiles_hw().0;
        assert!(tile_rows.start <= tile_rows.end && tile_rows.end <= th, "winograd: tile rows {tile_rows:?} of {th}");
        let out_rows = (2 * tile_rows.end).min(ho) - (2 * tile_rows.start).min(ho);
        assert!(
            packed.len() == self.packed_len()
                && xp.len() >= self.padded_len()
                && scratch.len() >= self.scratch_len()
                && out.len() == self.cout * out_rows * wo
                && bias.is_none_or(|b| b.len() == self.cout),
            "winograd: sizes"
        );
        let (shapes, lanes) = tiles();
        assert!(
            crate::isa::avx2() && lanes == self.lanes && shapes.contains(&(self.v, self.p)),
            "winograd::run: planned for another ISA"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the level (asserted above); the sizes are
        // checked above
        unsafe {
            if crate::isa::avx512() {
                avx512::run(self, packed, bias, xp, tile_rows, out, scratch)
            } else {
                avx2::run(self, packed, bias, xp, tile_rows, out, scratch)
            }
        }
    }
}

/// `G g Gᵀ` of one 3x3 filter `g` (row-major), in f64: the 4x4 `U`, row-major.
fn transform_filter(g: &[f32; 9]) -> [f64; 16] {
    let g = g.map(f64::from);
    // G g: 4x3
    let mut gg = [[0.0f64; 3]; 4];
    for c in 0..3 {
        let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
        gg[0][c] = a;
        gg[1][c] = 0.5 * (a + b + d);
        gg[2][c] = 0.5 * (a - b + d);
        gg[3][c] = d;
    }
    // (G g) Gᵀ: 4x4
    let mut u = [0.0f64; 16];
    for (r, row) in gg.iter().enumerate() {
        let (a, b, d) = (row[0], row[1], row[2]);
        u[4 * r] = a;
        u[4 * r + 1] = 0.5 * (a + b + d);
        u[4 * r + 2] = 0.5 * (a - b + d);
        u[4 * r + 3] = d;
    }
    u
}

/// The kernel for one ISA: its module name, `#[target_feature]` list,
/// vector type and lanes, register tiles (vectors, tiles), and intrinsics.
macro_rules! winograd_kernel {
    ($isa:ident, $features:literal, $vec:ty, $lanes:literal, [$(($v:literal, $p:literal)),+],
     $set1:ident, $load:ident, $fma:ident, $add:ident, $sub:ident, $store:ident, $zero:ident,
     $transpose:path, $store_n:path, $evens_odds:item, $joined:item) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::Plan;

            /// The register tiles (vectors of channels, tiles) this kernel has.
            pub const TILES: &[(usize, usize)] = &[$(($v, $p)),+];

            $evens_odds

            $joined

            /// `2·lanes` values in two vectors: those from `p[0]` (`K ==
            /// 1`), or `2·lanes / K` from each `p[k]` in turn (`K` of 2 or 4).
            ///
            /// # Safety
            /// The module's features; each `p[k]` readable for those values.
            #[inline(always)]
            unsafe fn load_rows<const K: usize>(p: [*const f32; K]) -> ($vec, $vec) {
                match K {
                    1 => ($load(p[0]), $load(p[0].add($lanes))),
                    2 => ($load(p[0]), $load(p[1])),
                    4 => (joined(p[0], p[1]), joined(p[2], p[3])),
                    _ => unreachable!("winograd: {K} tile rows a vector"),
                }
            }

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
                tile_rows: std::ops::Range<usize>,
                out: &mut [f32],
                scratch: &mut [f32],
            ) {
                // SAFETY: the caller's guarantees, passed on
                unsafe {
                    match (plan.v, plan.p) {
                        $(
                            ($v, $p) => run_tiles::<$v, $p>(plan, packed, bias, xp, tile_rows, out, scratch),
                        )+
                        other => unreachable!("winograd: no {other:?} tile at {}", stringify!($isa)),
                    }
                }
            }

            /// [`run`] with register tiles of `V` vectors of channels and `P` tiles.
            ///
            /// # Safety
            /// As [`run`]; `plan.v == V`, `plan.p == P`.
            #[target_feature(enable = $features)]
            unsafe fn run_tiles<const V: usize, const P: usize>(
                plan: &Plan,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                tile_rows: std::ops::Range<usize>,
                out: &mut [f32],
                scratch: &mut [f32],
            ) {
                let block = V * $lanes;
                let (ho, wo) = plan.output_hw();
                let tw = plan.tiles_hw().1;
                let cin = plan.cin;
                let first_row = 2 * tile_rows.start;
                let out_plane = ((2 * tile_rows.end).min(ho) - first_row) * wo;
                let band = plan.band_rows();
                let block_len = 16 * cin * block;
                let (transformed, products) = scratch.split_at_mut(scratch.len() - 16 * super::P_MAX * block);
                for b0 in tile_rows.clone().step_by(band) {
                    let b1 = (b0 + band).min(tile_rows.end);
                    let stride = plan.band_tiles(b1 - b0);
                    // the band's V[ξ][ci][tile]; the slack past its last tile is zero
                    let xi_stride = plan.xi_stride(stride);
                    let v = &mut transformed[..16 * xi_stride];
                    transform_band(plan, xp, b0..b1, v, stride, xi_stride);
                    for co0 in (0..plan.cout).step_by(block) {
                        let u = packed.as_ptr().add(co0 / block * block_len);
                        let valid_c = block.min(plan.cout - co0);
                        let b: [$vec; V] = std::array::from_fn(|vv| {
                            let mut lanes = [0.0f32; $lanes];
                            if let Some(bias) = bias {
                                for (l, value) in lanes.iter_mut().enumerate() {
                                    *value = bias.get(co0 + vv * $lanes + l).copied().unwrap_or(0.0);
                                }
                            }
                            $load(lanes.as_ptr())
                        });
                        for ty in b0..b1 {
                            for tx0 in (0..tw).step_by(P) {
                                let t0 = (ty - b0) * tw + tx0;
                                // SAFETY: u holds block_len values; v reads tiles
                                // t0..t0 + P < stride of each (ξ, ci); products
                                // holds 16·P·block values
                                unsafe {
                                    products_tile::<V, P>(
                                        cin,
                                        u,
                                        v.as_ptr().add(t0),
                                        (stride, xi_stride),
                                        products.as_mut_ptr(),
                                    );
                                }
                                let valid_p = P.min(tw - tx0);
                                // SAFETY: the stores reach channel co0 + valid_c - 1 < cout,
                                // rows below 2·tile_rows.end and ho, columns below wo
                                unsafe {
                                    output_tile::<V, P>(
                                        products.as_ptr(),
                                        b,
                                        out.as_mut_ptr().add(co0 * out_plane),
                                        out_plane,
                                        valid_c,
                                        valid_p,
                                        (2 * ty - first_row, 2 * tx0),
                                        (ho - 2 * ty).min(2),
                                        wo,
                                    );
                                }
                            }
                        }
                    }
                }
            }

            /// `V[ξ][ci][t]` of the tile rows `rows` of the padded input `xp`
            /// into `v[ξ·xi_stride + ci·stride + t]`, zero past the band's last tile.
            ///
            /// # Safety
            /// The module's features; `xp` of `plan.padded_len()` values; `v`
            /// of `16·xi_stride`, `stride >= rows.len()·tw + P_MAX`,
            /// `xi_stride >= cin·stride`.
            #[target_feature(enable = $features)]
            unsafe fn transform_band(
                plan: &Plan,
                xp: &[f32],
                rows: std::ops::Range<usize>,
                v: &mut [f32],
                stride: usize,
                xi_stride: usize,
            ) {
                let tw = plan.tiles_hw().1;
                let (wp, plane) = (plan.wp(), plan.plane());
                let band = rows.len();
                // tile rows per vector of tiles: a narrow plane's tile rows
                // (4 or 8 tiles at AVX-512) share one call instead of each
                // filling a vector mostly with tiles the next row overwrites
                let k = if tw < $lanes && $lanes % tw == 0 && $lanes / tw <= 4 { $lanes / tw } else { 1 };
                for ci in 0..plan.cin {
                    let x = xp.as_ptr().add(ci * plane);
                    for ty in rows.clone().step_by(k) {
                        // SAFETY: a group of k tile rows reads rows 2·ty' to
                        // 2·ty' + 3 < 2·th + 2 (the plane's rows) of its tile rows
                        // ty' (a group past the band's end repeats its last
                        // row), 2·tw + 2 = wp values each; a single row reads
                        // up to 2·lanes + 2 values past its start, which
                        // padded_len()'s slack covers. The stores, lanes tiles
                        // from tile (ty - start)·tw of each (ξ, ci), stay below
                        // stride (past the band's last tile they fall in the
                        // P_MAX slack, zeroed below; a single row's last
                        // vector spills into the next row's tiles, written
                        // after it)
                        unsafe {
                            let at = v.as_mut_ptr().add(ci * stride + (ty - rows.start) * tw);
                            let row = |j: usize| x.add(2 * (ty + j).min(rows.end - 1) * wp);
                            match k {
                                4 => transform_input::<4>([row(0), row(1), row(2), row(3)], wp, at, xi_stride),
                                2 => transform_input::<2>([row(0), row(1)], wp, at, xi_stride),
                                _ => {
                                    for tx0 in (0..tw).step_by($lanes) {
                                        transform_input::<1>([row(0).add(2 * tx0)], wp, at.add(tx0), xi_stride);
                                    }
                                }
                            }
                        }
                    }
                    for xi in 0..16 {
                        v[xi * xi_stride + ci * stride + band * tw..][..super::P_MAX].fill(0.0);
                    }
                }
            }

            /// `V = Bᵀ d B` of `lanes` consecutive tiles, `d` their 4x4 input
            /// tiles (overlapping by 2) in the padded plane, into
            /// `v[ξ·xi_stride + t]`: with `K == 1`, the `lanes` tiles from
            /// `x[0]` along one tile row; with `K` of 2 or 4, the first
            /// `lanes / K` tiles of `K` tile rows, from `x[k]` each (rows
            /// `wp` apart in the plane).
            ///
            /// # Safety
            /// The module's features; from each `x[k]` readable for `3·wp`
            /// values plus `2·lanes + 2` (`K == 1`) or `2·lanes / K + 2`;
            /// `v` writable at those outputs.
            #[target_feature(enable = $features)]
            unsafe fn transform_input<const K: usize>(x: [*const f32; K], wp: usize, v: *mut f32, xi_stride: usize) {
                // per row r: a_j(r)[t] = Σ_c Bᵀ[j][c] d[r][2t + c]
                let a: [[$vec; 4]; 4] = std::array::from_fn(|r| {
                    let (e0, o0) = evens_odds(load_rows::<K>(x.map(|p| p.add(r * wp))));
                    let (e1, o1) = evens_odds(load_rows::<K>(x.map(|p| p.add(r * wp + 2))));
                    [$sub(e0, e1), $add(o0, e1), $sub(e1, o0), $sub(o0, o1)]
                });
                // V[i][j] = Σ_r Bᵀ[i][r] a_j(r)
                for j in 0..4 {
                    let rows = [
                        $sub(a[0][j], a[2][j]),
                        $add(a[1][j], a[2][j]),
                        $sub(a[2][j], a[1][j]),
                        $sub(a[1][j], a[3][j]),
                    ];
                    for (i, &value) in rows.iter().enumerate() {
                        $store(v.add((4 * i + j) * xi_stride), value);
                    }
                }
            }

            /// `products[ξ][p][c] = Σ_ci v[ξ·xi_stride + ci·stride + p] · u[(ξ·cin + ci)·block + c]`
            /// for `ξ < 16`, `p < P`, `c < V·lanes`.
            ///
            /// # Safety
            /// The module's features; the pointers readable and writable as stated.
            #[target_feature(enable = $features)]
            unsafe fn products_tile<const V: usize, const P: usize>(
                cin: usize,
                u: *const f32,
                v: *const f32,
                (stride, xi_stride): (usize, usize),
                products: *mut f32,
            ) {
                let block = V * $lanes;
                let mut u = u;
                for xi in 0..16 {
                    let mut acc: [[$vec; V]; P] = [[$zero(); V]; P];
                    let row = v.add(xi * xi_stride);
                    for ci in 0..cin {
                        let src = row.add(ci * stride);
                        let wv: [$vec; V] = std::array::from_fn(|vv| $load(u.add(vv * $lanes)));
                        u = u.add(block);
                        for (p, sums) in acc.iter_mut().enumerate() {
                            let xv = $set1(*src.add(p));
                            for (a, &wv) in sums.iter_mut().zip(&wv) {
                                *a = $fma(wv, xv, *a);
                            }
                        }
                    }
                    // read from a copy, as in conv_channels' tile
                    let done = acc;
                    for (p, sums) in done.iter().enumerate() {
                        for (vv, &s) in sums.iter().enumerate() {
                            $store(products.add((xi * P + p) * block + vv * $lanes), s);
                        }
                    }
                }
            }

            /// The output transform `Y = Aᵀ M A + b` of `P` tiles' products,
            /// stored transposed: channel `c < valid_c` of tile `p < valid_p`
            /// to `y[c·out_plane + (row + i)·wo + col + 2p + j]` for `i < rows`,
            /// `col + 2p + j < wo`. Per output row, `lanes / 2` tiles give
            /// `lanes` vectors of positions (channels in the lanes), turned
            /// into rows of positions per channel by one register transpose.
            ///
            /// # Safety
            /// The module's features; `products` as [`products_tile`] wrote
            /// it; `y` writable at those outputs.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn output_tile<const V: usize, const P: usize>(
                products: *const f32,
                bias: [$vec; V],
                y: *mut f32,
                out_plane: usize,
                valid_c: usize,
                valid_p: usize,
                (row, col): (usize, usize),
                rows: usize,
                wo: usize,
            ) {
                let block = V * $lanes;
                // positions of a row the tiles cover, less any past the plane
                let cols = (2 * valid_p).min(wo - col);
                for vv in 0..V {
                    for i in 0..rows {
                        for p0 in (0..valid_p).step_by($lanes / 2) {
                            let mut r = [$zero(); $lanes];
                            for t in 0..$lanes / 2 {
                                if p0 + t >= valid_p {
                                    break;
                                }
                                let m = |xi: usize| $load(products.add((xi * P + p0 + t) * block + vv * $lanes));
                                // s[j] = Σ_k Aᵀ[i][k] M[k][j]
                                let s: [$vec; 4] = if i == 0 {
                                    std::array::from_fn(|j| $add($add(m(j), m(4 + j)), m(8 + j)))
                                } else {
                                    std::array::from_fn(|j| $sub($sub(m(4 + j), m(8 + j)), m(12 + j)))
                                };
                                // Y[i][0] = s[0] + s[1] + s[2], Y[i][1] = s[1] - s[2] - s[3]
                                r[2 * t] = $add($add($add(s[0], s[1]), s[2]), bias[vv]);
                                r[2 * t + 1] = $add($sub($sub(s[1], s[2]), s[3]), bias[vv]);
                            }
                            let n = (cols - 2 * p0).min($lanes);
                            for (l, &v) in $transpose(r).iter().enumerate() {
                                let c = vv * $lanes + l;
                                if c >= valid_c {
                                    break;
                                }
                                $store_n(y.add(c * out_plane + (row + i) * wo + col + 2 * p0), v, n);
                            }
                        }
                    }
                }
            }
        }
    };
}

// AVX-512's register tiles: those of `conv_channels`, and 2x4 for 7x7
// planes (4 tiles a row) with 32 channels.
winograd_kernel!(
    avx512,
    "avx512f,avx512bw,avx512dq,avx512vl,fma",
    __m512,
    16,
    [
        (4, 6),
        (4, 5),
        (4, 4),
        (3, 8),
        (2, 13),
        (2, 12),
        (2, 10),
        (2, 8),
        (2, 7),
        (2, 4),
        (1, 24),
        (1, 16),
        (1, 14),
        (1, 8)
    ],
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_storeu_ps,
    _mm512_setzero_ps,
    super::super::image_lanes::transpose16,
    super::super::image_lanes::store_first16,
    /// The even and odd values of the 32 in `(a, b)`.
    #[inline(always)]
    unsafe fn evens_odds((a, b): (__m512, __m512)) -> (__m512, __m512) {
        let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        (_mm512_permutex2var_ps(a, evens, b), _mm512_permutex2var_ps(a, odds, b))
    },
    /// 8 values from `lo`, then 8 from `hi`.
    ///
    /// # Safety
    /// AVX-512F; `lo` and `hi` readable for 8 values.
    #[inline(always)]
    unsafe fn joined(lo: *const f32, hi: *const f32) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_loadu_ps(lo)), _mm256_loadu_ps(hi))
    }
);

// AVX2's: those of `conv_channels`.
winograd_kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    [(2, 6), (2, 5), (2, 4), (2, 3), (1, 12), (1, 10), (1, 8), (1, 7)],
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_storeu_ps,
    _mm256_setzero_ps,
    super::super::image_lanes::transpose8,
    super::super::image_lanes::store_first8,
    /// The even and odd values of the 16 in `(a, b)`.
    #[inline(always)]
    unsafe fn evens_odds((a, b): (__m256, __m256)) -> (__m256, __m256) {
        // a0 a2 b0 b2 a4 a6 b4 b6, then the 64-bit pairs in order 0 2 1 3
        let evens = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
        let odds = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
        (
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(evens)),
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(odds)),
        )
    },
    /// 4 values from `lo`, then 4 from `hi`.
    ///
    /// # Safety
    /// AVX2; `lo` and `hi` readable for 4 values.
    #[inline(always)]
    unsafe fn joined(lo: *const f32, hi: *const f32) -> __m256 {
        _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi))
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::reference::{close, forward, input_grad, values};

    #[test]
    fn the_filter_transform_is_g_g_gt() {
        // a delta filter at (1,1): U = G e11 Gᵀ = outer(G[:,1], G[:,1])
        let mut g = [0.0f32; 9];
        g[4] = 1.0;
        let col = [0.0, 0.5, -0.5, 0.0];
        let u = transform_filter(&g);
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(u[4 * i + j], col[i] * col[j], "U[{i}][{j}]");
            }
        }
    }

    /// Forward and input gradient against im2col + matrix product (+
    /// col2im): paddings 0, 1 and 2, odd and even planes (tiles hanging
    /// past the edge), channel counts around the vectors, every band and
    /// row split.
    #[test]
    fn matches_im2col_and_the_matrix_product() {
        if !crate::isa::avx2() {
            eprintln!("winograd: skipped, this CPU (or NORMLAB_ISA) has no AVX2");
            return;
        }
        let mut used = std::collections::BTreeSet::new();
        let shapes = [
            (3, 16, 7, 9, 1),
            (5, 17, 12, 11, 1),
            (8, 32, 28, 28, 1),
            (16, 33, 6, 6, 0),
            (16, 16, 5, 5, 2),
            (16, 128, 7, 7, 1),
            (32, 64, 8, 8, 1),
            (32, 32, 16, 16, 1),
            (16, 64, 4, 4, 1),
            (24, 16, 24, 24, 1),
            (16, 16, 3, 3, 1),
            (32, 32, 14, 14, 1),
            (64, 16, 40, 40, 1),
        ];
        for (cin, cout, h, w, pad) in shapes {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: 3, stride: 1, padding: pad };
            let (ho, wo) = g.output_hw().unwrap();
            let (x, wt, bias) = (values(cin * h * w, 1), values(cout * cin * 9, 2), values(cout, 3));
            let what = format!("cin {cin} cout {cout} {h}x{w} pad {pad}");
            let want = forward(&g, cout, &x, &wt, &bias);
            assert!(applies::<f32>(&g, cout), "{what}");
            let plan = Plan::forward(&g, cout);
            used.insert((plan.v, plan.p));
            let (mut packed, mut xp) = (Vec::new(), vec![f32::NAN; plan.padded_len()]);
            let mut scratch = vec![f32::NAN; plan.scratch_len()];
            plan.pack_weights(&wt, &mut packed);
            plan.pad_input(&x, &mut xp);
            let mut y = vec![f32::NAN; cout * ho * wo];
            plan.run(&packed, Some(&bias), &xp, &mut y, &mut scratch);
            close(&y, &want, &format!("forward, {what}"));
            {
                let mut worst = (0.0f64, 0.0f64);
                for co in 0..cout {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut sum = bias[co] as f64;
                            for ci in 0..cin {
                                for i in 0..3 {
                                    for j in 0..3 {
                                        let (iy, ix) =
                                            ((oy + i) as isize - pad as isize, (ox + j) as isize - pad as isize);
                                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                            sum += wt[((co * cin + ci) * 3 + i) * 3 + j] as f64
                                                * x[(ci * h + iy as usize) * w + ix as usize] as f64;
                                        }
                                    }
                                }
                            }
                            let k = (co * ho + oy) * wo + ox;
                            worst.0 = worst.0.max((y[k] as f64 - sum).abs() / sum.abs().max(1.0));
                            worst.1 = worst.1.max((want[k] as f64 - sum).abs() / sum.abs().max(1.0));
                        }
                    }
                }
                // F(2x2,3x3)'s transforms add and halve exactly: its rounding
                // is that of the direct sums (measured 0.5-2.1x im2col's error)
                assert!(
                    worst.0 <= 3.0 * worst.1.max(1e-6),
                    "forward, {what}: {:.2e} from the exact sums, im2col {:.2e}",
                    worst.0,
                    worst.1
                );
            }
            // the tile rows in two runs, as threads split them
            let th = plan.tiles_hw().0;
            let half = th / 2;
            let top_rows = (2 * half).min(ho);
            let (mut top, mut bottom) =
                (vec![f32::NAN; cout * top_rows * wo], vec![f32::NAN; cout * (ho - top_rows) * wo]);
            plan.run_rows(&packed, Some(&bias), &xp, 0..half, &mut top, &mut scratch);
            plan.run_rows(&packed, Some(&bias), &xp, half..th, &mut bottom, &mut scratch);
            let mut split = Vec::new();
            for c in 0..cout {
                split.extend_from_slice(&top[c * top_rows * wo..(c + 1) * top_rows * wo]);
                split.extend_from_slice(&bottom[c * (ho - top_rows) * wo..(c + 1) * (ho - top_rows) * wo]);
            }
            assert_eq!(
                split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "rows in two runs, {what}"
            );
            if !input_grad_applies::<f32>(&g, cout) {
                continue;
            }
            let dy = values(cout * ho * wo, 4);
            let want_dx = input_grad(&g, cout, &wt, &dy);
            let back = Plan::input_grad(&g, cout);
            let mut dyp = vec![f32::NAN; back.padded_len()];
            let mut scratch = vec![f32::NAN; back.scratch_len()];
            back.pack_flipped_weights(&wt, &mut packed);
            back.pad_input(&dy, &mut dyp);
            let mut dx = vec![f32::NAN; cin * h * w];
            back.run(&packed, None, &dyp, &mut dx, &mut scratch);
            close(&dx, &want_dx, &format!("input gradient, {what}"));
        }
        eprintln!("winograd at {}: tiles {used:?}", crate::isa::active());
    }
}
