//! Direct 2-D convolution for stride 1 without padding (LeNet's case),
//! register-blocked so the compiler keeps a tile of outputs in vector
//! registers. The im2col + matrix-product path in `conv.rs` is the general
//! one and the reference these are tested against.
//!
//! Forward:  `y[co][oh][ow] = Σ_{ci,i,j} w[co][ci][i][j] · x[ci][oh+i][ow+j]`
//! Weight gradient: `dw[co][ci][i][j] += Σ_{oh,ow} dy[co][oh][ow] · x[ci][oh+i][ow+j]`
//!
//! Why not im2col for these shapes: with 6 or 16 output channels and 5x5
//! kernels the matrices are so thin that packing them costs as much as
//! multiplying them.

use super::conv::ConvGeometry;
use super::image_lanes;
use crate::real::{as_f32, as_f32_mut, mul_add, Real};

/// Whether the direct kernels handle this convolution: stride 1, no
/// padding, kernel 3 or 5, and an output at least [`LANES`] wide and 4 high
/// (a tile). Other convolutions take the im2col + matrix-product path.
pub fn supported(g: &ConvGeometry) -> bool {
    g.stride == 1
        && g.padding == 0
        && matches!(g.kernel, 3 | 5)
        && g.output_hw().is_some_and(|(ho, wo)| ho >= 4 && wo >= LANES)
}

/// Whether the direct weight gradient is the faster choice: a short
/// reduction (`Cin·k·k` ≤ 64, LeNet's first layer: 86 GFLOP/s per thread
/// against 20 for im2col + matrix product, `dev/examples/conv_kernels.rs`). A
/// longer one with up to 16 channels (the second layer) takes
/// [`weight_grad_by_channels`].
pub fn weight_grad_supported(g: &ConvGeometry) -> bool {
    supported(g) && g.col_rows() <= 64
}

/// Output channels and output rows per forward tile, chosen by the number
/// of output channels so little of the tile is padding, and by the level:
/// a tile's `CB·R` accumulators, `R` input vectors and a broadcast weight
/// must fit the vector registers, 32 at AVX-512 and 16 at AVX2. One
/// thread, GFLOP/s (`dev/examples/conv_tiles.rs`, Zen 4):
///
/// | level   | 1 -> 6, 28x28 | 6 -> 16, 28x28 | 16 -> 32, 14x14 |
/// |---------|---------------|----------------|-----------------|
/// | AVX-512 | 6x3: 94-100   | 8x2: 97        | 8x2: 61         |
/// | AVX2    | 6x3: 50, 3x3: 93-96 | 8x2: 57, 4x2: 105-107 | 8x2: 36, 4x2: 66-68 |
///
/// At AVX2 the wider tiles spill accumulators to the stack on every tap.
fn tile_shape(cout: usize) -> (usize, usize) {
    if crate::isa::active() == crate::isa::Isa::Avx2 {
        return if !cout.is_multiple_of(4) && cout.is_multiple_of(3) { (3, 3) } else { (4, 2) };
    }
    if cout.is_multiple_of(8) {
        (8, 2)
    } else if cout <= 6 || cout.is_multiple_of(6) {
        (6, 3)
    } else {
        (4, 4)
    }
}

/// Output rows per tile for weights packed in blocks of `cb` channels
/// ([`tile_shape`]'s pairs).
fn tile_rows(cb: usize) -> usize {
    match cb {
        8 => 2,
        6 | 3 => 3,
        _ if crate::isa::active() == crate::isa::Isa::Avx2 => 2,
        _ => 4,
    }
}

/// Weights reordered for [`forward`]: blocks of a tile's output channels,
/// `values[block][ci][i][j][c]`, zero-padded, and the channels per block
/// (chosen with the level at packing, kept so that [`forward`] reads them
/// as packed even if the level changes in between).
#[derive(Clone, Debug, Default)]
pub struct PackedWeights<T> {
    block: usize,
    values: Vec<T>,
}

/// Packs `w[co][ci][i][j]` for [`forward`] at the active level.
pub fn pack_weights<T: Real>(w: &[T], cout: usize, cin: usize, k: usize, packed: &mut PackedWeights<T>) {
    packed.block = tile_shape(cout).0;
    pack_weights_blocked(w, cout, cin, k, packed.block, &mut packed.values);
}

/// Reorders `w[co][ci][i][j]` into blocks of `cb` output channels,
/// `packed[block][ci][i][j][c]`, zero-padded (for [`forward_tiled`] with
/// `CB = cb`).
pub fn pack_weights_blocked<T: Real>(w: &[T], cout: usize, cin: usize, k: usize, cb: usize, packed: &mut Vec<T>) {
    let blocks = cout.div_ceil(cb);
    packed.clear();
    packed.resize(blocks * cin * k * k * cb, T::zero());
    for co in 0..cout {
        let (b, c) = (co / cb, co % cb);
        for ci in 0..cin {
            for t in 0..k * k {
                packed[((b * cin + ci) * k * k + t) * cb + c] = w[(co * cin + ci) * k * k + t];
            }
        }
    }
}

/// One image: `y` is overwritten with `bias + conv(x, w)`; `packed` is
/// [`pack_weights`] of `w`. Every tile sums the taps in the same order, so
/// the outputs are bitwise the same whichever tile runs.
pub fn forward<T: Real>(
    g: &ConvGeometry,
    cout: usize,
    packed: &PackedWeights<T>,
    bias: Option<&[T]>,
    x: &[T],
    y: &mut [T],
) {
    let (cb, values) = (packed.block, packed.values.as_slice());
    if cb == 8 && wide::applies::<T>(g, cout) {
        return wide::forward_8x4(g, cout, as_f32(values), bias.map(as_f32), as_f32(x), as_f32_mut(y));
    }
    match (g.kernel, cb, tile_rows(cb)) {
        (5, 8, 2) => forward_tiled::<T, 5, 8, 2>(g, cout, values, bias, x, y),
        (5, 6, 3) => forward_tiled::<T, 5, 6, 3>(g, cout, values, bias, x, y),
        (5, 4, 4) => forward_tiled::<T, 5, 4, 4>(g, cout, values, bias, x, y),
        (5, 4, 2) => forward_tiled::<T, 5, 4, 2>(g, cout, values, bias, x, y),
        (5, 3, 3) => forward_tiled::<T, 5, 3, 3>(g, cout, values, bias, x, y),
        (3, 8, 2) => forward_tiled::<T, 3, 8, 2>(g, cout, values, bias, x, y),
        (3, 6, 3) => forward_tiled::<T, 3, 6, 3>(g, cout, values, bias, x, y),
        (3, 4, 4) => forward_tiled::<T, 3, 4, 4>(g, cout, values, bias, x, y),
        (3, 4, 2) => forward_tiled::<T, 3, 4, 2>(g, cout, values, bias, x, y),
        (3, 3, 3) => forward_tiled::<T, 3, 3, 3>(g, cout, values, bias, x, y),
        (k, cb, r) => panic!("direct convolution: no {cb}x{r} tile for kernel {k} (kernels 3 and 5)"),
    }
}

/// Consecutive images `x` (and their `dy`):
/// `dw[co][ci][i][j] += Σ_images Σ dy[co][oh][ow] · x[ci][oh+i][ow+j]`.
/// Partial sums stay in vector lanes across all the images and are reduced
/// once at the end, so pass a group of images rather than one.
///
/// Compiled for AVX2 and run at AVX-512 too: the AVX-512 compile of the same
/// loop joined pairs of 8-lane accumulators into 16-lane registers and spent
/// its time moving their halves (1 -> 6, 28x28: 41 GFLOP/s against 71,
/// `dev/examples/dx_kernel.rs`). The same operations in the same order, so
/// the same values at every level.
pub fn weight_grad<T: Real>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx2() {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<T: Real>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
            weight_grad_kernel(g, cout, x, dy, dw)
        }
        // SAFETY: the CPU has AVX2 and FMA (isa::avx2 checked it)
        return unsafe { avx2(g, cout, x, dy, dw) };
    }
    weight_grad_kernel(g, cout, x, dy, dw)
}

#[inline(always)]
fn weight_grad_kernel<T: Real>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
    match g.kernel {
        5 => weight_grad_k::<T, 5>(g, cout, x, dy, dw),
        3 => weight_grad_k::<T, 3>(g, cout, x, dy, dw),
        k => panic!("direct convolution supports kernels 3 and 5, got {k}"),
    }
}

/// Output channels per weight-gradient tile: `K·DB` vector accumulators, 10
/// for 5x5 kernels, which with `DB` gradient vectors and an input vector fit
/// AVX2's 16 registers (3 channels spilled: 1 -> 6, 28x28 at 42 GFLOP/s
/// against 71).
const DB: usize = 2;

#[inline(always)]
fn weight_grad_k<T: Real, const K: usize>(g: &ConvGeometry, cout: usize, x: &[T], dy: &[T], dw: &mut [T]) {
    let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
    let (cin, h, w) = (g.channels, g.height, g.width);
    let (x_len, dy_len) = (cin * h * w, cout * ho * wo);
    let images = x.len() / x_len;
    assert_eq!(dy.len(), images * dy_len, "one dy per image");
    for co0 in (0..cout).step_by(DB) {
        let nb = DB.min(cout - co0);
        for ci in 0..cin {
            for i in 0..K {
                let (lanes, tail) = weight_grad_taps::<T, K>(x, dy, (co0, nb, ci, i), (x_len, dy_len), (h, w, ho, wo));
                for c in 0..DB {
                    for j in 0..K {
                        let total = super::sum8(lanes[c][j]) + tail[c][j];
                        if c < nb {
                            dw[(((co0 + c) * cin + ci) * K + i) * K + j] += total;
                        }
                    }
                }
            }
        }
    }
}

/// For output channels `co0..co0+nb` (up to [`DB`]), input channel `ci` and
/// kernel row `i`: `lanes[c][j]`, the partial sums of `dy[co0+c] · x[ci]`
/// shifted by `(i, j)`, one per column lane, and `tail[c][j]` for columns past
/// the last whole vector. Returned by value so they stay in registers (see
/// `accumulate_row`).
#[inline(always)]
fn weight_grad_taps<T: Real, const K: usize>(
    x: &[T],
    dy: &[T],
    (co0, nb, ci, i): (usize, usize, usize, usize),
    (x_len, dy_len): (usize, usize),
    (h, w, ho, wo): (usize, usize, usize, usize),
) -> ([[[T; LANES]; K]; DB], [[T; K]; DB]) {
    let mut lanes = [[[T::zero(); LANES]; K]; DB];
    let mut tail = [[T::zero(); K]; DB];
    let full = wo - wo % LANES;
    for (xi, di) in x.chunks_exact(x_len).zip(dy.chunks_exact(dy_len)) {
        for oh in 0..ho {
            let x_row = &xi[(ci * h + oh + i) * w..][..w];
            // channels past the last one repeat it and are discarded
            let dy_rows: [&[T]; DB] = std::array::from_fn(|c| &di[((co0 + c.min(nb - 1)) * ho + oh) * wo..][..wo]);
            for ow in (0..full).step_by(LANES) {
                let d: [[T; LANES]; DB] =
                    std::array::from_fn(|c| dy_rows[c][ow..ow + LANES].try_into().expect("dy row"));
                let x_seg = &x_row[ow..ow + LANES + K - 1];
                for j in 0..K {
                    separate_loads();
                    let xs: [T; LANES] = x_seg[j..j + LANES].try_into().expect("x row");
                    for c in 0..DB {
                        for t in 0..LANES {
                            lanes[c][j][t] = mul_add(d[c][t], xs[t], lanes[c][j][t]);
                        }
                    }
                }
            }
            for ow in full..wo {
                for c in 0..DB {
                    for j in 0..K {
                        tail[c][j] += dy_rows[c][ow] * x_row[ow + j];
                    }
                }
            }
        }
    }
    (lanes, tail)
}

/// Whether [`weight_grad_by_channels`] handles this convolution: the direct
/// geometry with at most 16 output channels (two vectors; LeNet's 6 and 16).
pub fn weight_grad_by_channels_supported(g: &ConvGeometry, cout: usize) -> bool {
    supported(g) && (1..=2 * LANES).contains(&cout)
}

multiversion! {
    /// Weight gradient of a group of images with the output channels in vector
    /// lanes: `dW[co][tap] = Σ_images Σ_p dy[co][p] · x[tap shifted to p]`.
    /// `dy` is first transposed to `[p][co]` (into `dy_t`, at least
    /// `images·p·16` long; channels padded with zeros to whole vectors), then
    /// for each block of taps every position loads its gradients (one or two
    /// vectors) and broadcasts one input value per tap: 16 accumulators, at most
    /// 10 loads per 16 multiply-adds, no im2col. `dw` is overwritten.
    pub fn weight_grad_by_channels<T: Real>(
        g: &ConvGeometry,
        cout: usize,
        x: &[T],
        dy: &[T],
        dy_t: &mut [T],
        dw: &mut [T],
    ) {
        let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
        let (p, x_len, taps) = (ho * wo, g.channels * g.height * g.width, g.col_rows());
        let vectors = cout.div_ceil(LANES);
        let width = vectors * LANES;
        let images = x.len() / x_len;
        assert!(
            (1..=2).contains(&vectors) && dy.len() == images * cout * p && dw.len() == cout * taps,
            "weight_grad_by_channels: {cout} output channels (at most 16), or shapes"
        );
        let dy_t = &mut dy_t[..images * p * width];
        if width > cout {
            dy_t.fill(T::zero());
        }
        for (src, dst) in dy.chunks_exact(cout * p).zip(dy_t.chunks_exact_mut(width * p)) {
            if width == 16 && image_lanes::applies::<T>(p) {
                image_lanes::to_lanes(as_f32(src), cout, p, p, as_f32_mut(dst));
                continue;
            }
            for (co, plane) in src.chunks_exact(p).enumerate() {
                for (q, &v) in plane.iter().enumerate() {
                    dst[q * width + co] = v;
                }
            }
        }
        if wide::weight_grad_applies::<T>(g, cout) {
            return wide::weight_grad_16(g, cout, as_f32(x), as_f32(dy_t), as_f32_mut(dw));
        }
        // taps per block: `CV·TB` accumulators, with `CV` gradient vectors and
        // a broadcast input, within the level's registers (32 at AVX-512, 16
        // at AVX2; at AVX2 2 x 8 spilled: 6 -> 16, 12x12 at 42 GFLOP/s
        // against 81 for 2 x 4, `dev/examples/dx_kernel.rs`)
        match (vectors, crate::isa::active() == crate::isa::Isa::Avx2) {
            (1, false) => weight_grad_by_channels_cv::<T, 1, 16>(g, cout, x, dy_t, dw),
            (1, true) => weight_grad_by_channels_cv::<T, 1, 8>(g, cout, x, dy_t, dw),
            (_, false) => weight_grad_by_channels_cv::<T, 2, 8>(g, cout, x, dy_t, dw),
            (_, true) => weight_grad_by_channels_cv::<T, 2, 4>(g, cout, x, dy_t, dw),
        }
    }
}

/// `CV` vectors of output channels, `TB` taps per block (`CV·TB` accumulators);
/// `dy_t` is the transposed gradient, `CV·8` values per position.
#[inline(always)]
fn weight_grad_by_channels_cv<T: Real, const CV: usize, const TB: usize>(
    g: &ConvGeometry,
    cout: usize,
    x: &[T],
    dy_t: &[T],
    dw: &mut [T],
) {
    let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
    let (cin, h, w, k) = (g.channels, g.height, g.width, g.kernel);
    let (width, p, x_len, taps) = (CV * LANES, ho * wo, cin * h * w, cin * k * k);
    // offset of tap t = (ci, i, j) from an output position's top-left input
    let offset = |t: usize| {
        let (ci, ij) = (t / (k * k), t % (k * k));
        (ci * h + ij / k) * w + ij % k
    };
    for t0 in (0..taps).step_by(TB) {
        // taps past the last one repeat it and are discarded
        let offsets: [usize; TB] = std::array::from_fn(|b| offset((t0 + b).min(taps - 1)));
        let mut acc = [[[T::zero(); LANES]; CV]; TB];
        for (xi, dti) in x.chunks_exact(x_len).zip(dy_t.chunks_exact(width * p)) {
            for (oh, d_row) in dti.chunks_exact(wo * width).enumerate() {
                // each tap's input row for this output row, sliced once so the
                // row's loop indexes without bounds checks
                let x_rows: [&[T]; TB] = std::array::from_fn(|b| &xi[oh * w + offsets[b]..][..wo]);
                acc = accumulate_row(acc, &x_rows, d_row);
            }
        }
        // constant indices into `acc` only: an index computed at run time would
        // keep the accumulators in memory, stored back on every step of the loop above
        for (b, a) in acc.iter().enumerate() {
            for (v, lanes) in a.iter().enumerate() {
                for (l, &value) in lanes.iter().enumerate() {
                    let co = v * LANES + l;
                    if t0 + b < taps && co < cout {
                        dw[co * taps + t0 + b] = value;
                    }
                }
            }
        }
    }
}

/// `acc[b][v] += dy_t[ow][v] · x_rows[b][ow]` over one output row. The
/// accumulators go in and come out by value, which keeps them in registers
/// during the row (updated in place in an array, or with the loops over
/// rows and images inside, the compiler stored them back on every step).
#[inline(always)]
fn accumulate_row<T: Real, const CV: usize, const TB: usize>(
    mut acc: [[[T; LANES]; CV]; TB],
    x_rows: &[&[T]; TB],
    d_row: &[T],
) -> [[[T; LANES]; CV]; TB] {
    for (ow, d_pos) in d_row.chunks_exact(CV * LANES).enumerate() {
        let d: [[T; LANES]; CV] = std::array::from_fn(|v| d_pos[v * LANES..][..LANES].try_into().expect("dy_t row"));
        for b in 0..TB {
            let xv = x_rows[b][ow];
            for v in 0..CV {
                for l in 0..LANES {
                    acc[b][v][l] = mul_add(d[v][l], xv, acc[b][v][l]);
                }
            }
        }
    }
    acc
}

/// Keeps the compiler from merging the `K` overlapping row loads of the
/// weight gradient into one load and a chain of shuffles, which it does
/// when the loop over `j` is unrolled and which made that kernel 2x slower
/// than plain unaligned vector loads. An empty `asm!` may touch memory as far
/// as the compiler knows, so loads are not moved across it; it emits nothing.
#[inline(always)]
fn separate_loads() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty instruction string with no operands does nothing.
    unsafe {
        std::arch::asm!("", options(nostack, preserves_flags));
    }
}

/// Output columns per vector: one AVX register of f32.
pub const LANES: usize = 8;

/// Start of each tile of `len` along an axis of `n` (≥ `len`): `0, len, 2·len, …`
/// and, when `len` does not divide `n`, one last tile flush with the end that
/// overlaps the one before (its outputs are simply written twice).
pub(crate) fn tile_starts(n: usize, len: usize) -> impl Iterator<Item = usize> {
    let tail = (!n.is_multiple_of(len)).then_some(n - len);
    (0..n / len).map(move |t| t * len).chain(tail)
}

/// Forward on one image by tiles of `CB` channels × `R` output rows × [`LANES`]
/// output columns, `CB·R` vector accumulators. Each tap `(ci, i, j)` loads `R`
/// input vectors and `CB` broadcast weights for `CB·R` multiply-adds.
/// `packed` is [`pack_weights_blocked`] with `cb = CB`. Needs `Ho ≥ R`,
/// `Wo ≥ LANES`. f32 at AVX2 and AVX-512 runs the tiles written with
/// intrinsics (`tiles.rs`), bitwise [`forward_tiled_generic`]'s values.
pub fn forward_tiled<T: Real, const K: usize, const CB: usize, const R: usize>(
    g: &ConvGeometry,
    cout: usize,
    packed: &[T],
    bias: Option<&[T]>,
    x: &[T],
    y: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        let (packed, bias, x, y) = (as_f32(packed), bias.map(as_f32), as_f32(x), as_f32_mut(y));
        match crate::isa::active() {
            // SAFETY: active() names no level this CPU lacks
            crate::isa::Isa::Avx512 => {
                return unsafe { tiles::forward_avx512::<K, CB, R>(g, cout, packed, bias, x, y) }
            }
            // SAFETY: as above
            crate::isa::Isa::Avx2 => return unsafe { tiles::forward_avx2::<K, CB, R>(g, cout, packed, bias, x, y) },
            crate::isa::Isa::Portable => {}
        }
    }
    forward_tiled_generic::<T, K, CB, R>(g, cout, packed, bias, x, y)
}

#[cfg(target_arch = "x86_64")]
mod tiles;

multiversion! {
    /// [`forward_tiled`] for any [`Real`], in plain loops: the portable
    /// code, f64's, and the reference the intrinsic tiles are tested against.
    pub fn forward_tiled_generic<T: Real; const K: usize, const CB: usize, const R: usize>(
        g: &ConvGeometry,
        cout: usize,
        packed: &[T],
        bias: Option<&[T]>,
        x: &[T],
        y: &mut [T],
    ) {
        let (ho, wo) = g.output_hw().expect("supported() checked the geometry");
        let (cin, h, w) = (g.channels, g.height, g.width);
        assert!(ho >= R && wo >= LANES && x.len() == cin * h * w && y.len() == cout * ho * wo);
        for (b, wb) in packed.chunks_exact(cin * K * K * CB).enumerate() {
            let co0 = b * CB;
            let valid = CB.min(cout - co0);
            for oh in tile_starts(ho, R) {
                for ow in tile_starts(wo, LANES) {
                    let mut acc = [[[T::zero(); LANES]; R]; CB];
                    for ci in 0..cin {
                        for i in 0..K {
                            let rows: [&[T]; R] = std::array::from_fn(|r| {
                                let start = (ci * h + oh + r + i) * w + ow;
                                &x[start..start + LANES + K - 1]
                            });
                            let taps: &[T] = &wb[(ci * K + i) * K * CB..][..K * CB];
                            for j in 0..K {
                                let ws: [T; CB] = taps[j * CB..][..CB].try_into().expect("packed block");
                                for r in 0..R {
                                    let xs: [T; LANES] = rows[r][j..j + LANES].try_into().expect("tile");
                                    for c in 0..CB {
                                        for t in 0..LANES {
                                            acc[c][r][t] = mul_add(ws[c], xs[t], acc[c][r][t]);
                                        }
                                    }
                                }
                            }
                        }
                    }
                    for (c, planes) in acc.iter().enumerate().take(valid) {
                        let b = bias.map_or(T::zero(), |b| b[co0 + c]);
                        for (r, v) in planes.iter().enumerate() {
                            let out = &mut y[((co0 + c) * ho + oh + r) * wo + ow..][..LANES];
                            for t in 0..LANES {
                                out[t] = v[t] + b;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The forward tile for outputs 8 wide (LeNet's second layer) on AVX-512:
/// 8 channels × 4 rows × 8 columns, two output rows per 16-lane vector, so
/// each multiply-add does 16 outputs where the 8-lane tiles do 8. The same
/// products in the same order as [`forward_tiled`]'s 8x2 tile, so bitwise
/// the same outputs (tested). Alone 1.6x faster (conv2's forward 0.225 ->
/// 0.14 ms, 2 threads); the training epoch moved within its noise.
///
/// Public only for `dev/examples/wgrad_speed.rs`, which times the kernel alone;
/// callers go through [`forward`] and [`weight_grad_by_channels`].
#[doc(hidden)]
pub mod wide;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::conv::im2col;
    use crate::kernels::gemm::{gemm_reference, Product};

    fn values(n: usize, seed: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f64 - 1001.0) / 500.0).collect()
    }

    /// Direct forward and weight gradient equal im2col + plain matrix products.
    #[test]
    fn matches_im2col_reference() {
        // every tile shape (cout 16: 8x2, 6 and 5 and 12: 6x3, 9: 4x4), outputs that
        // are and are not multiples of the tile, both kernels
        for (cin, cout, h, w, k) in [
            (1, 6, 28, 28, 5),
            (6, 16, 12, 12, 5),
            (2, 5, 9, 13, 3),
            (3, 9, 7, 30, 3),
            (2, 12, 9, 12, 5),
            (4, 16, 10, 11, 3),
            (3, 8, 12, 13, 5),
        ] {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: k, stride: 1, padding: 0 };
            assert!(supported(&g));
            let (ho, wo) = g.output_hw().unwrap();
            let (kd, p) = (g.col_rows(), ho * wo);
            let x = values(cin * h * w, 1);
            let wt = values(cout * kd, 2);
            let bias = values(cout, 3);
            let dy = values(cout * p, 4);
            let mut col = vec![0.0; kd * p];
            im2col(&g, &x, &mut col);
            let mut want = vec![0.0; cout * p];
            gemm_reference(Product::nn(cout, p, kd), 1.0, &wt, &col, 0.0, &mut want);
            for co in 0..cout {
                want[co * p..(co + 1) * p].iter_mut().for_each(|v| *v += bias[co]);
            }
            let mut packed = PackedWeights::default();
            pack_weights(&wt, cout, cin, k, &mut packed);
            let mut got = vec![f64::NAN; cout * p];
            forward(&g, cout, &packed, Some(&bias), &x, &mut got);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-9, "forward {cin}->{cout} {h}x{w} k{k}: {a} vs {b}");
            }
            let mut want_dw = vec![0.0; cout * kd];
            gemm_reference(Product::nt(cout, kd, p), 1.0, &dy, &col, 0.0, &mut want_dw);
            let mut got_dw = vec![0.0; cout * kd];
            weight_grad(&g, cout, &x, &dy, &mut got_dw);
            for (a, b) in got_dw.iter().zip(&want_dw) {
                assert!((a - b).abs() < 1e-9, "weight grad {cin}->{cout} {h}x{w} k{k}: {a} vs {b}");
            }
            if weight_grad_by_channels_supported(&g, cout) {
                let (mut by_channels, mut scratch) = (vec![f64::NAN; cout * kd], vec![0.0; 2 * p * 16]);
                weight_grad_by_channels(&g, cout, &x, &dy, &mut scratch, &mut by_channels);
                for (a, b) in by_channels.iter().zip(&want_dw) {
                    assert!((a - b).abs() < 1e-9, "weight grad by channels {cin}->{cout} {h}x{w} k{k}: {a} vs {b}");
                }
                let mut two = vec![f64::NAN; cout * kd];
                weight_grad_by_channels(&g, cout, &x.repeat(2), &dy.repeat(2), &mut scratch, &mut two);
                for (a, b) in two.iter().zip(&want_dw) {
                    assert!((a - 2.0 * b).abs() < 1e-9, "by channels, two images: {a} vs {}", 2.0 * b);
                }
            }
            // two images at once: the sum of both
            let mut two = vec![0.0; cout * kd];
            weight_grad(&g, cout, &x.repeat(2), &dy.repeat(2), &mut two);
            for (a, b) in two.iter().zip(&want_dw) {
                assert!((a - 2.0 * b).abs() < 1e-9, "weight grad of two images: {a} vs {}", 2.0 * b);
            }
        }
    }
}

#[cfg(test)]
mod geometry_tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_exactly_once_or_twice() {
        for (n, len) in [(8, 8), (12, 8), (24, 8), (7, 3), (9, 3), (4, 4)] {
            let mut hits = vec![0; n];
            for s in tile_starts(n, len) {
                hits[s..s + len].iter_mut().for_each(|h| *h += 1);
            }
            assert!(hits.iter().all(|&h| h == 1 || h == 2), "{n} by {len}: {hits:?}");
            assert_eq!(hits.iter().filter(|&&h| h == 1).count() == n, n % len == 0);
        }
    }

    #[test]
    fn too_small_outputs_take_the_general_path() {
        let g =
            |h: usize, w: usize| ConvGeometry { channels: 1, height: h, width: w, kernel: 5, stride: 1, padding: 0 };
        assert!(supported(&g(8, 12)));
        assert!(!supported(&g(7, 12)), "3 output rows");
        assert!(!supported(&g(12, 11)), "7 output columns");
        assert!(!supported(&ConvGeometry { padding: 1, ..g(12, 12) }));
        assert!(weight_grad_supported(&g(28, 28)));
        assert!(!weight_grad_supported(&ConvGeometry { channels: 6, ..g(12, 12) }));
    }

    /// Whether this build has the `wide` kernels.
    fn wide_build() -> bool {
        crate::isa::avx512()
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 500.0).collect()
    }

    #[test]
    fn wide_tile_is_bitwise_the_eight_lane_tile() {
        for (cin, cout, h) in [(6, 16, 12), (3, 8, 16), (1, 24, 8)] {
            let g = ConvGeometry { channels: cin, height: h, width: 12, kernel: 5, stride: 1, padding: 0 };
            assert_eq!(wide::applies::<f32>(&g, cout), wide_build(), "{g:?}");
            if !wide_build() {
                return;
            }
            let (ho, wo) = g.output_hw().unwrap();
            let (x, w) = (values(cin * h * 12, 1), values(cout * cin * 25, 2));
            let bias: Vec<f32> = (0..cout).map(|c| c as f32 * 0.25 - 1.0).collect();
            let mut packed = PackedWeights::default();
            pack_weights(&w, cout, cin, 5, &mut packed);
            assert_eq!(packed.block, 8);
            let (mut wide_y, mut tiled_y) = (vec![f32::NAN; cout * ho * wo], vec![f32::NAN; cout * ho * wo]);
            forward(&g, cout, &packed, Some(&bias), &x, &mut wide_y);
            forward_tiled::<f32, 5, 8, 2>(&g, cout, &packed.values, Some(&bias), &x, &mut tiled_y);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide_y), bits(&tiled_y), "{cin} -> {cout}, {h}x12");
        }
    }

    #[test]
    fn wide_weight_grad_is_bitwise_the_eight_lane_one() {
        // LeNet's conv2 over 3 images; 12 channels (4 padding lanes) on a non-square input
        for (cin, cout, h, w, images) in [(6, 16, 12, 12, 3), (2, 12, 9, 13, 2)] {
            let g = ConvGeometry { channels: cin, height: h, width: w, kernel: 5, stride: 1, padding: 0 };
            assert_eq!(wide::weight_grad_applies::<f32>(&g, cout), wide_build(), "{g:?}");
            if !wide_build() {
                return;
            }
            let (ho, wo) = g.output_hw().unwrap();
            let (x, dy) = (values(images * cin * h * w, 1), values(images * cout * ho * wo, 2));
            let mut dy_t = vec![0.0; images * ho * wo * 16];
            let mut wide_dw = vec![f32::NAN; cout * g.col_rows()];
            weight_grad_by_channels(&g, cout, &x, &dy, &mut dy_t, &mut wide_dw);
            // dy_t now holds the transposed gradient the 8-lane kernel reads
            let mut lanes_dw = vec![f32::NAN; cout * g.col_rows()];
            weight_grad_by_channels_cv::<f32, 2, 8>(&g, cout, &x, &dy_t, &mut lanes_dw);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide_dw), bits(&lanes_dw), "{cin} -> {cout}, {h}x{w}");
        }
    }

    /// Each intrinsic tile, at each level this CPU has, gives the generic
    /// tile's bits (outputs that are and are not whole tiles; with and
    /// without bias).
    #[test]
    fn intrinsic_tiles_are_bitwise_the_generic_ones() {
        #[cfg(target_arch = "x86_64")]
        {
            let detected = crate::isa::detected();
            let levels = [crate::isa::Isa::Avx2, crate::isa::Isa::Avx512];
            for level in levels.iter().filter(|&&l| l > detected) {
                println!("skipped the {level} tiles: this CPU's best level is {detected}");
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            for (cin, cout, h, w, with_bias) in [(1, 6, 28, 28, true), (6, 16, 12, 12, false), (3, 7, 11, 13, true)] {
                macro_rules! check {
                    ($k:literal, $cb:literal, $r:literal) => {{
                        let g = ConvGeometry { channels: cin, height: h, width: w, kernel: $k, stride: 1, padding: 0 };
                        let (ho, wo) = g.output_hw().unwrap();
                        let (x, wt) = (values(cin * h * w, 1), values(cout * cin * $k * $k, 2));
                        let bias: Vec<f32> = (0..cout).map(|c| c as f32 * 0.25 - 1.0).collect();
                        let bias = with_bias.then_some(bias.as_slice());
                        let mut packed = Vec::new();
                        pack_weights_blocked(&wt, cout, cin, $k, $cb, &mut packed);
                        let mut want = vec![f32::NAN; cout * ho * wo];
                        forward_tiled_generic::<f32, $k, $cb, $r>(&g, cout, &packed, bias, &x, &mut want);
                        for level in levels.iter().filter(|&&l| l <= detected) {
                            let mut got = vec![f32::NAN; cout * ho * wo];
                            // SAFETY: the CPU has the level (filtered above)
                            unsafe {
                                match level {
                                    crate::isa::Isa::Avx2 => {
                                        tiles::forward_avx2::<$k, $cb, $r>(&g, cout, &packed, bias, &x, &mut got)
                                    }
                                    _ => tiles::forward_avx512::<$k, $cb, $r>(&g, cout, &packed, bias, &x, &mut got),
                                }
                            }
                            assert_eq!(
                                bits(&got),
                                bits(&want),
                                "{level} {}x{} k{}: {cin}->{cout} {h}x{w}",
                                $cb,
                                $r,
                                $k
                            );
                        }
                    }};
                }
                check!(5, 8, 2);
                check!(5, 6, 3);
                check!(5, 4, 4);
                check!(5, 4, 2);
                check!(5, 3, 3);
                check!(3, 8, 2);
                check!(3, 4, 2);
                check!(3, 3, 3);
            }
        }
    }

    #[test]
    fn wide_tile_only_where_it_fits() {
        let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
        assert!(!wide::applies::<f64>(&g, 16));
        assert!(!wide::applies::<f32>(&g, 12), "channels not a multiple of 8");
        assert!(!wide::applies::<f32>(&ConvGeometry { width: 13, ..g }, 16), "9 columns");
        assert!(!wide::applies::<f32>(&ConvGeometry { height: 13, ..g }, 16), "9 rows");
        assert!(!wide::weight_grad_applies::<f64>(&g, 16));
        assert!(!wide::weight_grad_applies::<f32>(&g, 8), "8 channels: one 8-lane vector already");
        assert!(!wide::weight_grad_applies::<f32>(&ConvGeometry { kernel: 3, ..g }, 16));
    }
}
