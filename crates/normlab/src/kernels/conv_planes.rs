//! Direct convolution with stride 1 or 2, any kernel size and padding, on
//! zero-padded planes read as flat runs (f32, AVX-512 and AVX2). It serves the
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
//! output channels times `WTAPS` rows `ci·k·k + tap` of the flattened
//! weight (a 1x1 kernel fills a tile with input channels), each
//! accumulator a vector of positions, summed across the lanes once per
//! group of images ([`Plan::weight_grad`]). AVX-512: 2 x 9 under 32
//! output channels, 4 x 6 from 32 (3 x 9 spilled: 27 accumulators, 3
//! gradient vectors and the input left no register; 53-66 -> 79-97
//! GFLOP/s on 32 -> 32 at 16x16, `dev/examples/wgrad_parts.rs`, one
//! thread); AVX2: 2 x 6 and 3 x 4 (3 x 3 before: 62 -> 93-96 GFLOP/s on
//! 16 -> 16 at 32x32). Each accumulator's sum runs in the same order
//! whatever the tile.
//!
//! Stride 2 (ResNet's downsampling): the padded input is split into phase
//! planes, `xs[a][b][r][c] = xp[2r + a][2c + b]`, so that tap `(i, j)` of
//! output `(oh, ow)` is `xs[i mod 2][j mod 2][oh + i/2][ow + j/2]`: again
//! one run per tap, of the phase plane's rows (`Plan::tap_offset`). The
//! forward pass and the weight gradient run the same tiles on them, and
//! no multiply-add is spent on a zero. The input gradient is not one
//! convolution of `dy` but one per phase of `dx`, each with its own taps
//! ([`StridedInputGrad`]), run by the forward tiles too.
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
        && (1..=MAX_STRIDE).contains(&g.stride)
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
    applies::<T>(g, cout) && g.stride == 1 && g.channels >= channel_block() && g.padding < g.kernel
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
        && g.output_hw().is_some()
        && if g.stride == 1 { (2..=7).contains(&g.kernel) } else { g.stride <= MAX_STRIDE && g.kernel <= 7 }
}

/// The largest stride the plans take: a stride-`s` input is split into
/// `s²` phase planes, and past 2 (ResNet's downsampling) none is tested.
pub const MAX_STRIDE: usize = 2;

/// Vector lanes of the widest kernel: the wide gradient rows are padded to
/// a multiple of it, so every kernel reads whole vectors.
const MAX_LANES: usize = 16;

/// The shape of one direct convolution: `cin` planes of `h×w` padded by
/// `pad`, a `k×k` kernel with stride `stride`, `cout` output planes of `ho×wo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub pad: usize,
    pub stride: usize,
    pub cout: usize,
    /// Output channels and vectors of positions per register tile (one of
    /// the active ISA's tiles).
    cb: usize,
    nv: usize,
}

impl Plan {
    /// The forward pass of a convolution of geometry `g` with stride 1.
    pub fn forward(g: &ConvGeometry, cout: usize) -> Plan {
        Plan::with_best_tile(g.channels, g.height, g.width, g.kernel, g.padding, g.stride, cout)
    }

    /// The plan with the tile [`best_tile`] picks for its positions.
    fn with_best_tile(cin: usize, h: usize, w: usize, k: usize, pad: usize, stride: usize, cout: usize) -> Plan {
        let plan = Plan { cin, h, w, k, pad, stride, cout, cb: 0, nv: 0 };
        let (cb, nv) = best_tile(plan.output_hw().0 * plan.wp(), cout);
        Plan { cb, nv, ..plan }
    }

    /// Its input gradient, as a forward pass over `dy` (`cout` planes of
    /// the forward's output size, padded by `k - 1 - p`) into `cin` planes.
    pub fn input_grad(g: &ConvGeometry, cout: usize) -> Option<Plan> {
        if g.stride != 1 {
            return None;
        }
        let (ho, wo) = g.output_hw()?;
        let pad = (g.kernel - 1).checked_sub(g.padding)?;
        Some(Plan::with_best_tile(cout, ho, wo, g.kernel, pad, 1, g.channels))
    }

    /// The width of a padded row, or with stride `s` of a phase plane's row:
    /// `⌈(w + 2p) / s⌉`.
    fn wp(&self) -> usize {
        (self.w + 2 * self.pad).div_ceil(self.stride)
    }

    /// Values of one padded plane, or with stride `s` of one of its `s²`
    /// phase planes.
    fn plane(&self) -> usize {
        (self.h + 2 * self.pad).div_ceil(self.stride) * self.wp()
    }

    /// Phase rows (and columns) a tap reads: `min(s, k)` (a 1x1 kernel
    /// with stride 2 reads only the even rows and columns).
    fn phases(&self) -> usize {
        self.stride.min(self.k)
    }

    /// Values of one input channel's padded plane (its phase planes).
    fn channel_len(&self) -> usize {
        self.phases() * self.phases() * self.plane()
    }

    /// Where tap `t = i·k + j` reads, from the start of its input channel
    /// and of the output position's run: phase plane `(i mod s, j mod s)`,
    /// row `i / s`, column `j / s` (with stride 1, `i·wp + j`).
    fn tap_offset(&self, t: usize) -> usize {
        let (s, (i, j)) = (self.stride, (t / self.k, t % self.k));
        ((i % s) * self.phases() + j % s) * self.plane() + (i / s) * self.wp() + j / s
    }

    /// Output height and width.
    pub fn output_hw(&self) -> (usize, usize) {
        let s = self.stride;
        ((self.h + 2 * self.pad - self.k) / s + 1, (self.w + 2 * self.pad - self.k) / s + 1)
    }

    /// Values of one padded input ([`Self::pad_input`]): the planes and
    /// room for the last tile's reads past the end (dropped positions).
    pub fn padded_len(&self) -> usize {
        self.cin * self.channel_len() + TILE_MAX + self.k * (self.wp() + 1)
    }

    /// Values of the packed weights ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        self.cout.div_ceil(self.cb) * self.cin * self.k * self.k * self.cb
    }

    /// `x` (`cin` planes of `h×w`) into `xp` with `pad` zeros around each
    /// plane; with stride `s`, each padded plane split into `s²` phase
    /// planes, phase `(a, b)` holding the padded rows `a, a+s, ...` and
    /// columns `b, b+s, ...`, so that every tap reads a run of one of them.
    pub fn pad_input(&self, x: &[f32], xp: &mut [f32]) {
        assert!(xp.len() >= self.padded_len(), "pad_input: sizes");
        if self.stride == 1 {
            super::conv::pad_planes(x, (self.cin, self.h, self.w), self.pad, xp);
            return;
        }
        let (s, phases, wp, plane) = (self.stride, self.phases(), self.wp(), self.plane());
        let (h, w, pad) = (self.h, self.w, self.pad);
        assert_eq!(x.len(), self.cin * h * w, "pad_input: sizes");
        xp.fill(0.0);
        if s == 2 {
            split_phases_2(x, (h, w), pad, (phases, plane, wp), xp);
            return;
        }
        for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_exact_mut(self.channel_len())) {
            for (a, b) in (0..phases).flat_map(|a| (0..phases).map(move |b| (a, b))) {
                // the padded rows a, a + s, ... and columns b, b + s, ...: the
                // first input row and column among them, and where they land
                let (r0, c0) = ((a + s * pad - pad) % s, (b + s * pad - pad) % s);
                if r0 >= h || c0 >= w {
                    continue;
                }
                let (pr0, pc0) = ((r0 + pad) / s, (c0 + pad) / s);
                let phase = &mut dst[(a * phases + b) * plane..(a * phases + b + 1) * plane];
                for (pr, row) in (pr0..).zip(src.chunks_exact(w).skip(r0).step_by(s)) {
                    let out = &mut phase[pr * wp + pc0..(pr + 1) * wp];
                    for (d, &v) in out.iter_mut().zip(row[c0..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
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
        assert!((1..=7).contains(&k), "conv_planes::weight_grad: kernel {k}");
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
        let offsets: Vec<usize> = (0..self.k * self.k).map(|t| self.tap_offset(t)).collect();
        let runs =
            Runs { cin: self.cin, offsets: &offsets, channel_len: self.channel_len(), positions: ho * self.wp() };
        let (stride, len) = rows_len((self.cb, self.nv), &runs, packed.len());
        if rows.len() < len {
            rows.resize(len, 0.0);
        }
        sums_in_rows((self.cb, self.nv), &runs, packed, bias, xp, &mut rows[..len]);
        // the first wo of every padded row
        for (dst, src) in out.chunks_exact_mut(ho * wo).zip(rows.chunks_exact(stride)) {
            for (d, s) in dst.chunks_exact_mut(wo).zip(src.chunks_exact(self.wp())) {
                d.copy_from_slice(&s[..wo]);
            }
        }
    }
}

/// Whether the input gradient of a strided convolution runs here
/// ([`StridedInputGrad`]): f32 on AVX-512 or AVX2, stride 2 to
/// [`MAX_STRIDE`], a kernel of at most 7, at least a tile's input channels.
pub fn strided_input_grad_applies<T: 'static>(g: &ConvGeometry) -> bool {
    crate::isa::avx2()
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && (2..=MAX_STRIDE).contains(&g.stride)
        && g.kernel <= 7
        && g.output_hw().is_some()
        && g.channels >= channel_block()
}

/// The input gradient of a convolution with stride `s` ≥ 2, in phases.
///
/// Padded input position `(R, C) = (s·m + a, s·n + b)` receives, from
/// each output channel, the taps `(i, j) = (a + s·t, b + s·u)` at output
/// `(m - t, n - u)`:
/// `dxp[ci][s·m+a][s·n+b] = Σ_{co,t,u} w[co][ci][a+s·t][b+s·u] · dy[co][m-t][n-u]`.
/// With `dy` padded by `P = ⌈k/s⌉ - 1` above and to the left, each phase
/// `(a, b)` is a stride-1 convolution of the padded `dy` with its own
/// `⌈(k-a)/s⌉ x ⌈(k-b)/s⌉` taps, run by the forward tiles, and its
/// values land every `s` rows and columns of `dx`. Every multiply-add
/// is a real one (im2col's `Wᵀ·dy` then col2im computes the same sums).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StridedInputGrad {
    /// The forward convolution's input channels (this pass's outputs),
    /// its input size, kernel, padding, stride and output channels.
    cin: usize,
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    s: usize,
    cout: usize,
    /// The padding of `dy` above and to the left, and its padded rows' width and count.
    p: usize,
    wd: usize,
    hd: usize,
    /// Phase rows and columns computed (covering `dx`'s rows and columns).
    mh: usize,
    nw: usize,
    /// The phases with taps.
    phases: Vec<Phase>,
    /// The forward tile (channels, vectors) for `mh·wd` positions of `cin` channels.
    tile: (usize, usize),
}

/// One phase `(a, b)` of [`StridedInputGrad`]: its taps `(i, j)` of the
/// kernel and their offsets in `dy`'s padded rows.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Phase {
    ab: (usize, usize),
    taps: Vec<(usize, usize)>,
    offsets: Vec<usize>,
}

impl StridedInputGrad {
    /// The plan of a convolution of geometry `g` (stride 2 to
    /// [`MAX_STRIDE`]) with `cout` output channels.
    pub fn new(g: &ConvGeometry, cout: usize) -> Option<StridedInputGrad> {
        let (ho, wo) = g.output_hw()?;
        let (k, s, pad) = (g.kernel, g.stride, g.padding);
        if !(2..=MAX_STRIDE).contains(&s) || k > 7 {
            return None;
        }
        let p = k.div_ceil(s) - 1;
        // padded rows s·m + a cover dx's rows pad .. pad + h
        let (mh, nw) = ((g.height + pad - 1) / s + 1, (g.width + pad - 1) / s + 1);
        let (hd, wd) = (p + ho.max(mh), p + wo.max(nw));
        let mut phases = Vec::new();
        for a in 0..s.min(k) {
            for b in 0..s.min(k) {
                // tap (a + s·t, b + s·u) reads dy[m - t][n - u] = dyp[m + p - t][n + p - u]
                let taps: Vec<(usize, usize)> =
                    (a..k).step_by(s).flat_map(|i| (b..k).step_by(s).map(move |j| (i, j))).collect();
                let offsets = taps.iter().map(|&(i, j)| (p - (i - a) / s) * wd + (p - (j - b) / s)).collect();
                phases.push(Phase { ab: (a, b), taps, offsets });
            }
        }
        let tile = best_tile(mh * wd, g.channels);
        Some(StridedInputGrad {
            cin: g.channels,
            h: g.height,
            w: g.width,
            k,
            pad,
            s,
            cout,
            p,
            wd,
            hd,
            mh,
            nw,
            phases,
            tile,
        })
    }

    /// Values of one image's input gradient (`cin·h·w`).
    pub fn image_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// Values of one padded output gradient ([`Self::pad_grad`]).
    pub fn padded_len(&self) -> usize {
        self.cout * self.hd * self.wd + TILE_MAX + (self.p + 1) * (self.wd + 1)
    }

    /// Values of the packed weights ([`Self::pack_weights`]).
    pub fn packed_len(&self) -> usize {
        let taps: usize = self.phases.iter().map(|phase| phase.taps.len()).sum();
        self.cin.div_ceil(self.tile.0) * self.tile.0 * self.cout * taps
    }

    /// The forward weights `w[co][ci][i][j]`, per phase in tiles of input
    /// channels: `packed[phase][block][co][tap][c]` (`ci = block·cb + c`),
    /// zero past `cin`.
    pub fn pack_weights(&self, w: &[f32], packed: &mut Vec<f32>) {
        let (k, cb) = (self.k, self.tile.0);
        assert_eq!(w.len(), self.cout * self.cin * k * k, "pack_weights: weight size");
        packed.clear();
        packed.resize(self.packed_len(), 0.0);
        let mut at = 0;
        for Phase { taps, .. } in &self.phases {
            let block_len = self.cout * taps.len() * cb;
            for ci in 0..self.cin {
                let (block, c) = (ci / cb, ci % cb);
                for co in 0..self.cout {
                    for (t, &(i, j)) in taps.iter().enumerate() {
                        packed[at + block * block_len + (co * taps.len() + t) * cb + c] =
                            w[((co * self.cin + ci) * k + i) * k + j];
                    }
                }
            }
            at += self.cin.div_ceil(cb) * block_len;
        }
    }

    /// One image's output gradient (`cout` planes of `ho×wo`) into `dyp`
    /// with `P` zero rows and columns before, and zeros after.
    pub fn pad_grad(&self, dy: &[f32], dyp: &mut [f32]) {
        let (ho, wo) = ((self.h + 2 * self.pad - self.k) / self.s + 1, (self.w + 2 * self.pad - self.k) / self.s + 1);
        assert!(dy.len() == self.cout * ho * wo && dyp.len() >= self.padded_len(), "pad_grad: sizes");
        dyp.fill(0.0);
        for (src, dst) in dy.chunks_exact(ho * wo).zip(dyp.chunks_exact_mut(self.hd * self.wd)) {
            for (r, row) in src.chunks_exact(wo).enumerate() {
                let at = (r + self.p) * self.wd + self.p;
                super::copy_row(&mut dst[at..at + wo], row);
            }
        }
    }

    /// `dx` (`cin` planes of `h×w`) of one image from its padded output
    /// gradient ([`Self::pad_grad`]) and weights packed by
    /// [`Self::pack_weights`] under the same ISA. Needs AVX2. `rows` is scratch.
    pub fn run(&self, packed: &[f32], dyp: &[f32], dx: &mut [f32], rows: &mut Vec<f32>) {
        let (s, pad, wd, cb) = (self.s, self.pad, self.wd, self.tile.0);
        assert!(packed.len() == self.packed_len() && dyp.len() >= self.padded_len(), "conv_planes: sizes");
        assert_eq!(dx.len(), self.cin * self.h * self.w, "conv_planes: sizes");
        if self.k < s {
            // phases past the kernel receive nothing
            dx.fill(0.0);
        }
        // every phase's sums as padded rows, side by side in `rows`
        let mut parts = Vec::with_capacity(self.phases.len());
        let (mut at, mut total) = (0, 0);
        for Phase { taps, offsets, .. } in &self.phases {
            let len = self.cin.div_ceil(cb) * cb * self.cout * taps.len();
            let runs = Runs { cin: self.cout, offsets, channel_len: self.hd * self.wd, positions: self.mh * wd };
            let (stride, rows_len) = rows_len(self.tile, &runs, len);
            parts.push((at..at + len, runs, stride, total..total + rows_len));
            (at, total) = (at + len, total + rows_len);
        }
        if rows.len() < total {
            rows.resize(total, 0.0);
        }
        for (weights, runs, _, out) in &parts {
            sums_in_rows(self.tile, runs, &packed[weights.clone()], None, dyp, &mut rows[out.clone()]);
        }
        // dx row r is padded row r + pad, phase row (r + pad) / s of the
        // phases ((r + pad) mod s, b); each row written whole while in cache
        for (ci, plane) in dx.chunks_exact_mut(self.h * self.w).enumerate() {
            for (r, row) in plane.chunks_exact_mut(self.w).enumerate() {
                let (a, m) = ((r + pad) % s, (r + pad) / s);
                for (Phase { ab: (pa, b), .. }, (_, _, stride, out)) in self.phases.iter().zip(&parts) {
                    if *pa != a {
                        continue;
                    }
                    // the first column of this phase inside dx, and its phase column
                    let n0 = pad.saturating_sub(*b).div_ceil(s);
                    let c0 = s * n0 + b - pad;
                    if c0 >= self.w {
                        continue;
                    }
                    let from = &rows[out.start + ci * stride + m * wd + n0..];
                    for (d, &v) in row[c0..].iter_mut().step_by(s).zip(from) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// What a tile reads: `cin` input channels `channel_len` apart, each tap
/// a run at its offset from the output position, for `positions` output
/// positions (in the input's padded rows).
struct Runs<'a> {
    cin: usize,
    offsets: &'a [usize],
    channel_len: usize,
    positions: usize,
}

/// The `stride` of [`sums_in_rows`]'s output rows (the positions rounded
/// up to whole tiles) and the length of its output for `packed_len`
/// packed weights.
fn rows_len(tile: (usize, usize), runs: &Runs<'_>, packed_len: usize) -> (usize, usize) {
    let lanes = tiles().1;
    let stride = runs.positions.div_ceil(tile.1 * lanes) * tile.1 * lanes;
    (stride, packed_len / (runs.cin * runs.offsets.len()) * stride)
}

/// `rows[co·stride + q] = bias[co] + Σ_{ci,t} w[co][ci][t] · xp[ci·channel_len + q + offsets[t]]`
/// for `q < positions` (and the last tile's overhang) and every output
/// channel of `packed` (tiles of `tile.0` channels, `[block][ci][t][c]`),
/// with the active ISA's kernel; `stride` and the length of `rows` are [`rows_len`]'s.
fn sums_in_rows(
    tile: (usize, usize),
    runs: &Runs<'_>,
    packed: &[f32],
    bias: Option<&[f32]>,
    xp: &[f32],
    rows: &mut [f32],
) {
    let max_offset = runs.offsets.iter().copied().max().unwrap_or(0);
    assert!(
        runs.cin > 0
            && !runs.offsets.is_empty()
            && packed.len().is_multiple_of(runs.cin * runs.offsets.len() * tile.0)
            && xp.len() >= (runs.cin - 1) * runs.channel_len + runs.positions + TILE_MAX + max_offset
            && rows.len() == rows_len(tile, runs, packed.len()).1,
        "conv_planes: sizes"
    );
    assert!(crate::isa::avx2() && tiles().0.contains(&tile), "conv_planes: planned for another ISA");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has the level (asserted above); a tile reads at most
    // TILE_MAX - 1 + max_offset past its first position, and the first
    // positions stay below `positions` of the last channel: inside xp
    // (asserted above)
    unsafe {
        if crate::isa::avx512() {
            avx512::sums_in_rows(tile, runs, packed, bias, xp, rows)
        } else {
            avx2::sums_in_rows(tile, runs, packed, bias, xp, rows)
        }
    }
    // the assertion above fails first: no kernels here
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("conv_planes: no kernels {:?}", (bias, rows.len()))
}

/// `dst[i] = src[2i]`, eight at a time (a plain loop over pairs ran
/// scalar stores).
#[inline(always)]
fn every_other(dst: &mut [f32], src: &[f32]) {
    let whole = (dst.len() / 8).min(src.len() / 16);
    for (d8, s16) in dst.chunks_exact_mut(8).zip(src.chunks_exact(16)) {
        let s16: &[f32; 16] = s16.try_into().expect("chunks of 16");
        d8.copy_from_slice(&std::array::from_fn::<f32, 8, _>(|i| s16[2 * i]));
    }
    for (i, v) in dst.iter_mut().enumerate().skip(whole * 8) {
        *v = src[2 * i];
    }
}

super::multiversion! {
    /// [`Plan::pad_input`] with stride 2 into zeroed `xp`: each input row
    /// in one pass, its even and odd columns to two phase planes (`phases`
    /// of them per side, `plane` values of rows `wp` wide).
    fn split_phases_2(x: &[f32], hw: (usize, usize), pad: usize, sizes: (usize, usize, usize), xp: &mut [f32]) {
        let ((h, w), (phases, plane, wp)) = (hw, sizes);
        for (src, dst) in x.chunks_exact(h * w).zip(xp.chunks_mut(phases * phases * plane)) {
            for (r, row) in src.chunks_exact(w).enumerate() {
                let (a, pr) = ((r + pad) % 2, (r + pad) / 2);
                if a >= phases {
                    continue;
                }
                // column c lands in phase (a, (c + pad) mod 2) at (c + pad) / 2
                let at = |c: usize| (a * phases + (c + pad) % 2) * plane + pr * wp + (c + pad) / 2;
                if pad % 2 < phases {
                    let first = at(0);
                    every_other(&mut dst[first..first + w.div_ceil(2)], row);
                }
                if w > 1 && (1 + pad) % 2 < phases {
                    let second = at(1);
                    every_other(&mut dst[second..second + w / 2], &row[1..]);
                }
            }
        }
    }
}

/// The kernel for one ISA: its module name, `#[target_feature]` list,
/// vector type and lanes, register tiles (channels, vectors), channels
/// and taps per weight-gradient tile, intrinsics, and the sum across lanes.
macro_rules! planes_kernel {
    ($isa:ident, $features:literal, $vec:ty, $lanes:literal, [$(($cb:literal, $nv:literal)),+], ($wco:expr, $wtaps:expr), ($wco_wide:expr, $wtaps_wide:expr),
     $set1:ident, $load:ident, $fma:ident, $store:ident, $lane_sum:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::{Plan, Runs};

            /// The register tiles (output channels, vectors) this kernel has.
            pub const TILES: &[(usize, usize)] = &[$(($cb, $nv)),+];

            /// [`super::sums_in_rows`] with the tile `tile`, one of this module's.
            ///
            /// # Safety
            /// The CPU has the module's features; the sizes checked by the caller.
            #[target_feature(enable = $features)]
            pub unsafe fn sums_in_rows(
                tile: (usize, usize),
                runs: &Runs<'_>,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                rows: &mut [f32],
            ) {
                // SAFETY: the caller's guarantees, passed on
                unsafe {
                    match tile {
                        $(($cb, $nv) => rows_tiles::<$cb, $nv>(runs, packed, bias, xp, rows),)+
                        other => unreachable!("conv_planes: no {other:?} tile at {}", stringify!($isa)),
                    }
                }
            }

            /// [`sums_in_rows`] with tiles of `CB` channels and `NV` vectors.
            ///
            /// # Safety
            /// As [`sums_in_rows`].
            #[target_feature(enable = $features)]
            unsafe fn rows_tiles<const CB: usize, const NV: usize>(
                runs: &Runs<'_>,
                packed: &[f32],
                bias: Option<&[f32]>,
                xp: &[f32],
                rows: &mut [f32],
            ) {
                let tile = NV * $lanes;
                let (positions, channel_len, taps) = (runs.positions, runs.channel_len, runs.offsets.len());
                let tiles = positions.div_ceil(tile);
                let block_len = runs.cin * taps * CB;
                // the output as whole padded rows (positions per channel, then the
                // last tile's overhang), each tile stored with plain vector stores
                let stride = tiles * tile;
                for q0 in (0..positions).step_by(tile) {
                    for (block, weights) in packed.chunks_exact(block_len).enumerate() {
                        let co0 = block * CB;
                        let init: [f32; CB] =
                            std::array::from_fn(|c| bias.and_then(|b| b.get(co0 + c).copied()).unwrap_or(0.0));
                        // SAFETY: the reads reach q0 + tile - 1 + max(offsets) of the
                        // last channel at most, inside xp (the caller's check, tile ≤
                        // TILE_MAX); the stores reach (co0 + CB - 1)·stride + q0 + tile ≤ rows.len()
                        unsafe {
                            tile_sums::<CB, NV>(
                                runs.cin,
                                runs.offsets,
                                weights,
                                init,
                                xp.as_ptr().add(q0),
                                channel_len,
                                rows.as_mut_ptr().add(co0 * stride + q0),
                                stride,
                            )
                        };
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
                        weight_grad_tiles::<{ $wco_wide }, { $wtaps_wide }>(plan, images, xps, dyws, dw)
                    } else {
                        weight_grad_tiles::<{ $wco }, { $wtaps }>(plan, images, xps, dyws, dw)
                    }
                }
            }

            /// The weight gradient in tiles of `WCO` output
            /// channels × `WTAPS` rows `r = ci·k·k + tap` of the flattened
            /// weight (so a 1x1 kernel fills its tiles with input channels), each accumulator a
            /// vector of positions, over every image, then summed across
            /// lanes. A tile's missing channels or rows (past `cout`, past
            /// `cin·k·k`) compute on valid data and are not stored.
            ///
            /// # Safety
            /// The module's features; the sizes checked by [`Plan::weight_grad`].
            #[target_feature(enable = $features)]
            unsafe fn weight_grad_tiles<const WCO: usize, const WTAPS: usize>(
                plan: &Plan,
                images: usize,
                xps: &[f32],
                dyws: &[f32],
                dw: &mut [f32],
            ) {
                let (kk, rows) = (plan.k * plan.k, plan.cin * plan.k * plan.k);
                let (padded, wide) = (plan.padded_len(), plan.wide_len());
                let wide_plane = wide / plan.cout;
                let vectors = wide_plane / $lanes;
                let row_offset = |r: usize| (r / kk) * plan.channel_len() + plan.tap_offset(r % kk);
                for co0 in (0..plan.cout).step_by(WCO) {
                    // a missing channel repeats the last one (not stored)
                    let chans: [usize; WCO] = std::array::from_fn(|c| (co0 + c).min(plan.cout - 1));
                    for r0 in (0..rows).step_by(WTAPS) {
                        // a missing row reads offset 0 (not stored)
                        let offsets: [usize; WTAPS] =
                            std::array::from_fn(|t| if r0 + t < rows { row_offset(r0 + t) } else { 0 });
                        let mut acc: [[$vec; WTAPS]; WCO] = [[$set1(0.0); WTAPS]; WCO];
                        for img in 0..images {
                            let x = xps.as_ptr().add(img * padded);
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
                            for (t, &a) in row.iter().enumerate().take(rows.saturating_sub(r0)) {
                                dw[co * rows + r0 + t] = $lane_sum(a);
                            }
                        }
                    }
                }
            }

            /// One register tile: `y[c·stride + t] = init[c] + Σ_{ci,tap} w[c][ci][tap] · x[ci·channel_len + t + offsets[tap]]`
            /// for `t` in `0..NV·lanes` (`offsets` from [`Plan::tap_offset`]).
            ///
            /// # Safety
            /// The module's features; `x` readable for `(cin-1)·channel_len + NV·lanes + max(offsets)`
            /// values, `y` writable at `c·stride + t` for every `c < CB`, `t < NV·lanes`.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)] // the tile's inputs and output, each a pointer and its stride
            unsafe fn tile_sums<const CB: usize, const NV: usize>(
                cin: usize,
                offsets: &[usize],
                weights: &[f32],
                init: [f32; CB],
                x: *const f32,
                channel_len: usize,
                y: *mut f32,
                stride: usize,
            ) {
                let mut acc: [[$vec; NV]; CB] = std::array::from_fn(|c| [$set1(init[c]); NV]);
                let mut w = weights.as_ptr();
                for ci in 0..cin {
                    let base = x.add(ci * channel_len);
                    for &off in offsets {
                        let src = base.add(off);
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
    (2, 9),
    (4, 6),
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
    (2, 6),
    (3, 4),
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

    /// Forward, input gradient (stride 1) and weight gradient against
    /// im2col + matrix product (+ col2im), over kernel sizes 1/3/5/7,
    /// paddings 0 to k-1, strides 1 and 2, odd and even planes, channel
    /// counts around the tile's 8, and planes narrower and wider than a tile.
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
            .flat_map(|((cin, cout), k)| [4, 7, 8].map(|hw| (cin, cout, hw, hw, k, k / 2, 1)))
            .chain([(64, 64, 4, 4, 3, 1, 1), (64, 64, 4, 4, 5, 2, 1)]);
        // stride 2: ResNet's downsampling (3x3 and the 1x1 shortcut), odd
        // sizes, every kernel size
        let strided = [
            (16, 32, 32, 32, 3, 1, 2),
            (16, 32, 32, 32, 1, 0, 2),
            (32, 64, 16, 16, 3, 1, 2),
            (3, 8, 7, 9, 3, 1, 2),
            (5, 13, 12, 11, 3, 0, 2),
            (9, 20, 5, 5, 1, 0, 2),
            (2, 17, 10, 10, 5, 2, 2),
            (4, 8, 9, 8, 7, 3, 2),
            (6, 8, 9, 9, 2, 1, 2),
            (64, 9, 4, 4, 3, 1, 2),
            (9, 20, 5, 6, 1, 1, 2),
            (3, 8, 8, 7, 2, 2, 2),
        ];
        let mut tiles_used = std::collections::BTreeSet::new();
        for (cin, cout, h, w, k, pad, stride) in [
            (3, 8, 7, 9, 3, 1, 1),
            (5, 13, 12, 11, 3, 1, 1),
            (8, 16, 28, 28, 3, 1, 1),
            (16, 9, 6, 6, 3, 0, 1),
            (2, 17, 10, 10, 5, 2, 1),
            (4, 8, 9, 8, 7, 3, 1),
            (9, 20, 5, 5, 1, 0, 1),
            (3, 8, 4, 4, 3, 2, 1),
            (6, 8, 9, 9, 2, 1, 1),
        ]
        .into_iter()
        .chain(small)
        .chain(strided)
        {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: k, stride, padding: pad };
            let (ho, wo) = g.output_hw().unwrap();
            let (x, wt, bias) = (values(cin * h * w, 1), values(cout * cin * k * k, 2), values(cout, 3));
            let what = format!("cin {cin} cout {cout} {h}x{w} k {k} pad {pad} stride {stride}");

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
            if let Some(back) = Plan::input_grad(&g, cout) {
                let want_dx = input_grad(&g, cout, &wt, &dy);
                let mut dyp = vec![f32::NAN; back.padded_len()];
                back.pack_flipped_weights(&wt, &mut packed);
                back.pad_input(&dy, &mut dyp);
                let mut dx = vec![f32::NAN; cin * h * w];
                back.run(&packed, None, &dyp, &mut dx, &mut Vec::new());
                close(&dx, &want_dx, &format!("input gradient, {what}"));
            } else {
                assert!(stride > 1, "{what}: no input-gradient plan");
                let back = StridedInputGrad::new(&g, cout).unwrap();
                let want_dx = input_grad(&g, cout, &wt, &dy);
                let mut dyp = vec![f32::NAN; back.padded_len()];
                back.pack_weights(&wt, &mut packed);
                back.pad_grad(&dy, &mut dyp);
                let mut dx = vec![f32::NAN; cin * h * w];
                back.run(&packed, &dyp, &mut dx, &mut Vec::new());
                close(&dx, &want_dx, &format!("strided input gradient, {what}"));
            }

            // weight gradient of two images (the second's input and gradient
            // other values) against the sum of their matrix products, on
            // every shape the kernel takes, small planes included
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
