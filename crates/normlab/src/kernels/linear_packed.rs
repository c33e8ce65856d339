//! A linear layer's forward pass in f32 with the weights packed once:
//! `y[i][o] = bias[o] + Σ_q x[i][q]·w[o][q]`.
//!
//! [`crate::kernels::gemm::gemm`] hands the product to `matrixmultiply`,
//! which packs both operands into its own layout on every call: for a
//! linear layer at prediction time that repacks the same weights again and
//! again (a third of mlp-bn's forward pass at batch 256 went to packing).
//! Here the weights are packed once ([`PackedWeights::pack`]) into column
//! panels of `2·LANES` outputs (two vectors: 32 at AVX-512, 16 at AVX2;
//! the last ones narrower when that covers the rest, down to an AVX2
//! vector of 8 at AVX-512; zeros past the last output), and the input is
//! read where it lies: each register tile of `MR` rows × one panel (12×32
//! at AVX-512, 6×16 at AVX2) loads a panel's row of weights and broadcasts
//! each row's input value against it.
//!
//! The sums are formed in `matrixmultiply`'s order, so the values are
//! bitwise those of the `gemm` path on CPUs with FMA: over runs of
//! [`KC`] inputs, each run summed from zero with one fused multiply-add per
//! input in increasing order, then added to the output (to the bias, first).
//! Each output's order is fixed whatever the tile, the batch split or the
//! thread count.

use crate::aligned::AlignedVec;
use crate::isa::{self, Isa};
use crate::real::Real;

/// Inputs per run of a sum: `matrixmultiply`'s depth block for f32
/// (`S_KC`), so the runs, and the rounding between them, are its own. A
/// run of the input tile (`MR` rows × 1 KB) stays in L1 across the panels.
pub const KC: usize = 256;

/// Whether [`PackedWeights`] runs for `T` and a batch of `rows` here: f32
/// on x86-64 with AVX2 or AVX-512 active (elsewhere, and for f64, the layer
/// keeps `gemm`), except one row at AVX2, whose 1×16 tile has two chains
/// of multiply-adds, each waiting on the last: mlp-bn at batch 1 took 8.7
/// µs there against 7.5 with the dot products of
/// `gemm::rows_times_weights` (from 2 rows the packed kernel is faster:
/// 9.9 against 13.2 µs). At AVX-512 it is faster from 1 row (6.8 against
/// 8.2 µs). 1 thread, AMD EPYC (Zen 4).
pub fn applies<T: Real>(rows: usize) -> bool {
    let f32 = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    f32 && (isa::avx512() || (isa::avx2() && rows >= 2))
}

/// A linear layer's weights `(out_features, in_features)` in the panels
/// of the kernel of one instruction set.
#[derive(Default)]
pub struct PackedWeights {
    /// The level packed for (`None`: nothing packed yet).
    isa: Option<Isa>,
    in_features: usize,
    out_features: usize,
    panels: AlignedVec<f32>,
}

impl PackedWeights {
    /// Nothing packed; [`PackedWeights::pack`] fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether these are packed for the level the kernels use now
    /// ([`isa::active`] can be capped by tests between calls).
    pub fn current(&self) -> bool {
        self.isa == Some(isa::active())
    }

    /// Packs `w`, `out_features` rows of `in_features`, for the active
    /// level (which must be AVX2 or above), reusing the buffer.
    pub fn pack(&mut self, w: &[f32], out_features: usize, in_features: usize) {
        self.pack_at(isa::active(), w, out_features, in_features);
    }

    /// [`PackedWeights::pack`] for the kernel of `isa` (AVX2 or above, and
    /// at most what this CPU has), whichever is active: for tests.
    fn pack_at(&mut self, isa: Isa, w: &[f32], out_features: usize, in_features: usize) {
        assert!(isa >= Isa::Avx2 && isa <= isa::detected(), "linear_packed: no kernel at {isa} here");
        assert_eq!(w.len(), out_features * in_features, "linear_packed: weight size");
        let (lanes, half) = panel_shape(isa);
        let padded: usize = panels(out_features, lanes, half).map(|(_, width)| width).sum();
        self.panels.resize(padded * in_features, 0.0);
        let dst = self.panels.as_mut_slice();
        for (o0, width) in panels(out_features, lanes, half) {
            let panel = &mut dst[o0 * in_features..][..width * in_features];
            for (q, row) in panel.chunks_exact_mut(width).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if o0 + j < out_features { w[(o0 + j) * in_features + q] } else { 0.0 };
                }
            }
        }
        *self = PackedWeights { isa: Some(isa), in_features, out_features, panels: std::mem::take(&mut self.panels) };
    }

    /// `y = x·wᵀ + bias` for `x` of whole rows of `in_features` and `y` of
    /// as many rows of `out_features`; the bias is one value per output.
    pub fn forward(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        let (k, out) = (self.in_features, self.out_features);
        let isa = self.isa.expect("linear_packed: forward before pack");
        assert!(k > 0 && x.len().is_multiple_of(k), "linear_packed: x is not whole rows of {k}");
        let n = x.len() / k;
        assert_eq!(y.len(), n * out, "linear_packed: y holds {} values, {n} rows of {out} need {}", y.len(), n * out);
        if let Some(b) = bias {
            assert_eq!(b.len(), out, "linear_packed: bias size");
        }
        if n == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        match isa {
            // SAFETY: pack_at checked that this CPU has isa; the panels
            // were packed for it from out·k weights; the sizes of x, y and
            // bias are checked above
            Isa::Avx512 => unsafe { avx512::forward(self.panels.as_slice(), k, out, x, bias, y) },
            // SAFETY: as above
            Isa::Avx2 => unsafe { avx2::forward(self.panels.as_slice(), k, out, x, bias, y) },
            Isa::Portable => unreachable!("linear_packed: packed at portable"),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("linear_packed: packed at {isa} on a CPU without x86-64 kernels")
    }
}

/// The lanes of a vector and whether a half-vector panel exists at `isa`
/// (AVX2 or above).
fn panel_shape(isa: Isa) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        (avx512::LANES, avx512::HALF)
    } else {
        (avx2::LANES, avx2::HALF)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("linear_packed: no kernel at {isa} on this architecture")
}

/// `(first output, width)` of each panel of `out` outputs: two vectors of
/// `lanes`, then, for what is left, one vector, and (with `half`) one
/// vector of half as many lanes, at half the cost: 100 outputs at AVX-512
/// are 3 × 32 + 8 (4 used) instead of 3 × 32 + 16. Only the last panel
/// reaches past `out`, so a panel's weights start at `first output × in`.
fn panels(out: usize, lanes: usize, half: bool) -> impl Iterator<Item = (usize, usize)> {
    let narrow = if half { lanes / 2 } else { 0 };
    let mut o0 = 0;
    std::iter::from_fn(move || {
        let rest = out - o0;
        let width = match rest {
            0 => return None,
            r if r > lanes + narrow => 2 * lanes,
            r if r > narrow => lanes,
            _ => narrow,
        };
        let first = o0;
        o0 += width.min(rest);
        Some((first, width))
    })
}

/// What a tile's sums are added to.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum Start {
    /// Nothing: the first run of a layer without bias.
    Zero,
    /// The bias from this output on: the first run.
    Bias(*const f32),
    /// The output so far: every later run.
    Output,
}

/// One instruction set's kernel: `$vec` vectors of `$lanes` f32, tiles of
/// `$mr` rows (the row counts of the tiles at the batch's end listed in
/// `[$rows]`, 1 to `$mr`), and its partial load and store (the vector of
/// the last output panel past `out_features`).
macro_rules! packed_kernel {
    ($isa:ident, $features:literal, $vec:ty, $lanes:literal, $mr:literal, [$($rows:literal),+], $half:literal,
     $zero:ident, $set1:ident, $load:ident, $add:ident, $fma:ident, $store:ident,
     $load_part:path, $store_part:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use std::arch::x86_64::*;

            use super::{panels, Start, KC};

            /// Rows per tile.
            const MR: usize = $mr;
            /// f32 per vector.
            pub const LANES: usize = $lanes;
            /// Whether the last panel may be one vector of `LANES / 2`
            /// (the narrower level's tile, see [`super::panels`]).
            pub const HALF: bool = $half;

            /// [`super::PackedWeights::forward`] at this level.
            ///
            /// # Safety
            /// The CPU has the module's features; `packed` holds the panels
            /// of `out·k` weights packed with `$lanes` lanes; `x` is whole
            /// rows of `k` (k ≥ 1), `y` as many rows of `out`, `bias` (if
            /// any) `out` values.
            #[target_feature(enable = $features)]
            pub unsafe fn forward(packed: &[f32], k: usize, out: usize, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
                let n = x.len() / k;
                for k0 in (0..k).step_by(KC) {
                    let kc = (k - k0).min(KC);
                    for r0 in (0..n).step_by(MR) {
                        let rows = (n - r0).min(MR);
                        for (o0, width) in panels(out, LANES, HALF) {
                            let start = match bias {
                                _ if k0 > 0 => Start::Output,
                                // SAFETY: o0 < out = bias.len()
                                Some(b) => Start::Bias(unsafe { b.as_ptr().add(o0) }),
                                None => Start::Zero,
                            };
                            let cols = (out - o0).min(width);
                            // SAFETY: the tile reads rows r0..r0+rows of x at
                            // k0..k0+kc (inside x), the panel at o0 from input
                            // k0 on (o0·k + (k0 + kc)·width ≤ packed.len()),
                            // and reads and writes y's rows r0..r0+rows at
                            // o0..o0+cols, inside y
                            unsafe {
                                let xs = x.as_ptr().add(r0 * k + k0);
                                let ws = packed.as_ptr().add(o0 * k + k0 * width);
                                let ys = y.as_mut_ptr().add(r0 * out + o0);
                                match (rows, width) {
                                    $(
                                        ($rows, $lanes) => tile::<$rows, 1>(xs, k, ws, kc, start, ys, out, cols),
                                        ($rows, w) if w == 2 * $lanes => {
                                            tile::<$rows, 2>(xs, k, ws, kc, start, ys, out, cols)
                                        }
                                        ($rows, w) if HALF && w == $lanes / 2 => {
                                            super::avx2::tile::<$rows, 1>(xs, k, ws, kc, start, ys, out, cols)
                                        }
                                    )+
                                    other => unreachable!("linear_packed: no {other:?} tile"),
                                }
                            }
                        }
                    }
                }
            }

            /// `R` rows × `NV` vectors of outputs over one run of `kc`
            /// inputs: `x` (rows `k` apart) against a panel's weights `w`
            /// (`NV·$lanes` per input), added to `start`, stored to the
            /// first `cols` outputs of `y`'s rows (`out` apart).
            ///
            /// # Safety
            /// The module's features; the reads and writes inside the
            /// caller's slices, as [`forward`] checks.
            #[allow(clippy::too_many_arguments)]
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn tile<const R: usize, const NV: usize>(
                x: *const f32,
                k: usize,
                w: *const f32,
                kc: usize,
                start: Start,
                y: *mut f32,
                out: usize,
                cols: usize,
            ) {
                // SAFETY: x + r·k + q for r < R, q < kc; w + q·NV·lanes + v·lanes
                // (+ lanes) for q < kc, v < NV; y + r·out + c for c < cols: all
                // inside the caller's slices
                unsafe {
                    let mut acc: [[$vec; NV]; R] = [[$zero(); NV]; R];
                    for q in 0..kc {
                        let wq = w.add(q * NV * $lanes);
                        let mut wv: [$vec; NV] = [$zero(); NV];
                        for (v, wv) in wv.iter_mut().enumerate() {
                            *wv = $load(wq.add(v * $lanes));
                        }
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let xv = $set1(*x.add(r * k + q));
                            for v in 0..NV {
                                acc[v] = $fma(xv, wv[v], acc[v]);
                            }
                        }
                    }
                    // read from a copy, as in conv_channels' tile
                    let done = acc;
                    for (r, acc) in done.iter().enumerate() {
                        let yr = y.add(r * out);
                        for (v, &sum) in acc.iter().enumerate() {
                            let c0 = v * $lanes;
                            if c0 >= cols {
                                break;
                            }
                            let part = (cols - c0).min($lanes);
                            let base = match start {
                                Start::Zero => None,
                                Start::Bias(b) => Some(b.add(c0)),
                                Start::Output => Some(yr.add(c0) as *const f32),
                            };
                            let total = match base {
                                None => sum,
                                Some(b) if part == $lanes => $add($load(b), sum),
                                Some(b) => $add($load_part(b, part), sum),
                            };
                            if part == $lanes {
                                $store(yr.add(c0), total);
                            } else {
                                $store_part(yr.add(c0), part, total);
                            }
                        }
                    }
                }
            }
        }
    };
}

/// AVX-512's loads and stores of the first `n` (1 to 15) lanes; the rest
/// are not touched (masked lanes do not fault).
#[cfg(target_arch = "x86_64")]
mod masked512 {
    use std::arch::x86_64::*;

    /// The first `n` lanes at `p`, zeros after.
    ///
    /// # Safety
    /// AVX-512F; `p..p+n` readable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn load(p: *const f32, n: usize) -> __m512 {
        // SAFETY: the caller's; lanes from n on are masked off
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
    }

    /// Stores the first `n` lanes of `v` at `p`.
    ///
    /// # Safety
    /// AVX-512F; `p..p+n` writable.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn store(p: *mut f32, n: usize, v: __m512) {
        // SAFETY: the caller's; lanes from n on are masked off
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
    }
}

/// AVX2's loads and stores of the first `n` (1 to 7) lanes.
#[cfg(target_arch = "x86_64")]
mod masked256 {
    use std::arch::x86_64::*;

    /// All ones in the lanes below `n`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// The first `n` lanes at `p`, zeros after.
    ///
    /// # Safety
    /// AVX2; `p..p+n` readable.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn load(p: *const f32, n: usize) -> __m256 {
        // SAFETY: the caller's; lanes from n on are masked off
        unsafe { _mm256_maskload_ps(p, mask(n)) }
    }

    /// Stores the first `n` lanes of `v` at `p`.
    ///
    /// # Safety
    /// AVX2; `p..p+n` writable.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn store(p: *mut f32, n: usize, v: __m256) {
        // SAFETY: the caller's; lanes from n on are masked off
        unsafe { _mm256_maskstore_ps(p, mask(n), v) }
    }
}

packed_kernel!(
    avx512,
    "avx512f,avx512bw,avx512dq,avx512vl,fma",
    __m512,
    16,
    12,
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    true,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_add_ps,
    _mm512_fmadd_ps,
    _mm512_storeu_ps,
    super::masked512::load,
    super::masked512::store
);
packed_kernel!(
    avx2,
    "avx2,fma",
    __m256,
    8,
    6,
    [1, 2, 3, 4, 5, 6],
    false,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_add_ps,
    _mm256_fmadd_ps,
    _mm256_storeu_ps,
    super::masked256::load,
    super::masked256::store
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::{gemm, Product};

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0).collect()
    }

    /// The levels with a packed kernel, those this CPU lacks reported as skipped.
    fn levels() -> Vec<Isa> {
        let mut run = Vec::new();
        for isa in [Isa::Avx2, Isa::Avx512] {
            if cfg!(target_arch = "x86_64") && isa <= isa::detected() {
                run.push(isa);
            } else {
                eprintln!("linear_packed: skipped {isa}, this CPU does not have it");
            }
        }
        run
    }

    /// The packed kernel at every level this CPU has against the `gemm`
    /// path (`y` filled with the bias, then `x·wᵀ` added), for every row
    /// count from 1 to 13 (whole tiles and tails at both levels), every
    /// output count from 1 to 70 (whole, half and partial panels) and input
    /// counts 1 to 40 and 784 (runs of KC and a partial one), with and
    /// without bias: to 1e-5 relative, and bitwise where `matrixmultiply`
    /// fuses its multiply-adds too (a CPU with FMA).
    #[test]
    fn matches_gemm_for_odd_sizes() {
        let fma = cfg!(target_arch = "x86_64") && isa::detected() >= Isa::Avx2;
        for level in levels() {
            let mut packed = PackedWeights::new();
            for k in (1..=40).chain([784]) {
                for out in 1..=70 {
                    let w = values(out * k, 1);
                    let b = values(out, 2);
                    packed.pack_at(level, &w, out, k);
                    for n in 1..=13 {
                        let x = values(n * k, 3 + n);
                        for bias in [Some(&b[..]), None] {
                            let mut want: Vec<f32> = match bias {
                                Some(b) => b.iter().cycle().take(n * out).copied().collect(),
                                None => vec![f32::NAN; n * out],
                            };
                            let beta = if bias.is_some() { 1.0 } else { 0.0 };
                            gemm(Product::nt(n, out, k), 1.0, &x, &w, beta, &mut want);
                            let mut got = vec![f32::NAN; n * out];
                            packed.forward(&x, bias, &mut got);
                            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                                let what = || format!("{level} n {n} out {out} k {k} bias {}: y[{i}]", bias.is_some());
                                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{}: {g} vs {e}", what());
                                assert!(!fma || g.to_bits() == e.to_bits(), "{}: {g} vs {e} (bits)", what());
                            }
                        }
                    }
                }
            }
        }
    }

    /// Outputs past the rows and columns asked for are left alone: the
    /// tails store only what they own.
    #[test]
    fn writes_only_its_rows_and_outputs() {
        for level in levels() {
            let (n, out, k) = (5, 19, 9);
            let mut packed = PackedWeights::new();
            packed.pack_at(level, &values(out * k, 1), out, k);
            let mut y = vec![7.0f32; n * out + 3];
            packed.forward(&values(n * k, 2), None, &mut y[..n * out]);
            assert_eq!(&y[n * out..], &[7.0; 3], "{level}");
            assert!(y[..n * out].iter().all(|v| v.is_finite() && *v != 7.0), "{level}");
        }
    }
}
