//! 2x2 pooling with stride 2 of one plane: the average, and the maximum
//! with or without the position of each maximum.
//!
//! ```text
//! avg:      y[oh][ow] = ((a + b) + (c + d)) / 4          a b   the window: x[2oh][2ow], x[2oh][2ow+1]
//! max:      y[oh][ow] = first maximum of a, b, c, d       c d               x[2oh+1][2ow], x[2oh+1][2ow+1]
//! argmax:   its index within the plane (for backward only)
//! relu+max: y[oh][ow] = max of relu(a), relu(b), relu(c), relu(d)
//! ```
//!
//! The maximum is the first one in row-major order, a NaN counting as
//! larger than any number (`takes_over`): a NaN in a window comes out
//! (the first one, bits kept) as in PyTorch, and of equal values the first
//! wins, which decides between -0.0 and +0.0. Both ways of scanning a window
//! give it: the general loop of `MaxPool2d` one value after the other, and
//! the vector kernels as a tree, `(a vs b) vs (c vs d)`, which keeps the
//! row-major order because "the first of the largest" does not depend on
//! how the scan is grouped.
//!
//! The f32 kernels for AVX-512 and AVX2 are written by hand (below): the
//! compiler did not vectorize the scalar scan, which took 14% of vgg-bn's
//! eval forward. A step reads 2L values of each of the window's two rows
//! (L = 16 or 8 lanes), splits each row into even and odd columns with an
//! in-lane shuffle, picks within rows and then between them (compare masks
//! select the values, and the indices alongside), and one permutation puts
//! the L results in order. A row's last, shorter step reads and writes
//! through masks. f64, and CPUs without AVX2, run the scalar scan.
//!
//! Eval mode asks for values only, without the index bookkeeping; a
//! convolution followed by ReLU and max pooling pools the convolution's
//! output and applies ReLU in the same step, which gives bitwise
//! `max_pool(relu(z))` (see [`relu_max_pool_2x2`]) without a sweep that
//! writes `relu(z)` back.

use super::activation::{Activation, ReluAct};
use crate::real::Real;

/// 2x2 average pooling with stride 2 of one plane `w` wide (`w` even):
/// `y[oh][ow] = ((x[2oh][2ow] + x[2oh][2ow+1]) + (x[2oh+1][2ow] + x[2oh+1][2ow+1]))/4`.
#[inline]
pub fn avg_pool_2x2<T: Real>(x: &[T], w: usize, y: &mut [T]) {
    let quarter = T::from_f64(0.25);
    for (y_row, rows) in y.chunks_exact_mut(w / 2).zip(x.chunks_exact(2 * w)) {
        let (r0, r1) = rows.split_at(w);
        for ((o, a), b) in y_row.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = ((a[0] + a[1]) + (b[0] + b[1])) * quarter;
        }
    }
}

/// `a` replaced by `b` as a running maximum: `b > a`, or `b` NaN where `a`
/// is not (a NaN wins, as in PyTorch, so it is not hidden).
#[inline(always)]
pub(crate) fn takes_over<T: Real>(b: T, a: T) -> bool {
    b > a || (b.is_nan() && !a.is_nan())
}

/// 2x2 max pooling with stride 2 of one `h×w` plane into `y` (`⌊h/2⌋ ×
/// ⌊w/2⌋`), with the index within the plane of each maximum in `arg`: the
/// value and position `MaxPool2d`'s general loop picks for any window,
/// ties and NaNs included (see the module docs). Panics if `x`, `y` or
/// `arg` is shorter than that.
pub fn max_pool_2x2<T: Real>(x: &[T], hw: (usize, usize), y: &mut [T], arg: &mut [u32]) {
    dispatch::<T, true, false>(x, hw, y, arg)
}

/// [`max_pool_2x2`] without the positions (eval mode): bitwise the same
/// values.
pub fn max_pool_2x2_values<T: Real>(x: &[T], hw: (usize, usize), y: &mut [T]) {
    dispatch::<T, false, false>(x, hw, y, &mut [])
}

/// [`max_pool_2x2_values`] of `relu(x)` (ReLU as `layers::ReLU` computes
/// it, NaN to +0 included), bitwise, without writing `relu(x)` anywhere.
/// The pooled values are those of ReLU then max pooling, not of max
/// pooling then ReLU, which differ for a window with a NaN.
pub fn relu_max_pool_2x2<T: Real>(x: &[T], hw: (usize, usize), y: &mut [T]) {
    dispatch::<T, false, true>(x, hw, y, &mut [])
}

/// Checks the lengths, then runs the hand-written kernel of the active
/// level for f32, the scalar scan otherwise.
#[inline]
fn dispatch<T: Real, const INDEX: bool, const RELU: bool>(
    x: &[T],
    (h, w): (usize, usize),
    y: &mut [T],
    arg: &mut [u32],
) {
    let pooled = (h / 2) * (w / 2);
    assert!(
        x.len() >= h * w && y.len() >= pooled && (!INDEX || arg.len() >= pooled),
        "2x2 max pooling of a {h}x{w} plane: input {}, output {}, indices {}",
        x.len(),
        y.len(),
        arg.len()
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        use crate::real::{as_f32, as_f32_mut};
        let (xs, ys) = (as_f32(x), as_f32_mut(y));
        match crate::isa::active() {
            // SAFETY: active() names no level this CPU lacks
            crate::isa::Isa::Avx512 => return unsafe { avx512::scan::<INDEX, RELU>(xs, (h, w), ys, arg) },
            // SAFETY: as above
            crate::isa::Isa::Avx2 => return unsafe { avx2::scan::<INDEX, RELU>(xs, (h, w), ys, arg) },
            crate::isa::Isa::Portable => {}
        }
    }
    scan::<T, INDEX, RELU>(x, (h, w), y, arg)
}

multiversion! {
    /// The scalar scan, and the reference of the vector kernels: each
    /// window value after value in row-major order, a later value taking
    /// over only when [`takes_over`] (after ReLU when `RELU`); with `INDEX`,
    /// the winner's index within the plane goes to `arg`.
    fn scan<T: Real; const INDEX: bool, const RELU: bool>(x: &[T], hw: (usize, usize), y: &mut [T], arg: &mut [u32]) {
        let (h, w) = hw;
        let (ho, wo) = (h / 2, w / 2);
        let value = |v: T| if RELU { ReluAct.value(v) } else { v };
        for oh in 0..ho {
            let (r0, r1) = (&x[2 * oh * w..][..w], &x[(2 * oh + 1) * w..][..w]);
            let y_row = &mut y[oh * wo..][..wo];
            let base = 2 * oh * w;
            for (ow, out) in y_row.iter_mut().enumerate() {
                let j = 2 * ow;
                let (mut best, mut at) = (value(r0[j]), base + j);
                for (v, idx) in [(r0[j + 1], base + j + 1), (r1[j], base + w + j), (r1[j + 1], base + w + j + 1)] {
                    let v = value(v);
                    if takes_over(v, best) {
                        best = v;
                        at = idx;
                    }
                }
                *out = best;
                if INDEX {
                    arg[oh * wo + ow] = at as u32;
                }
            }
        }
    }
}

/// The input gradient of one `h×w` plane through 2x2 max pooling with
/// stride 2: each window's gradient `g` at its maximum `arg` (an index
/// within the plane, from [`max_pool_2x2`]), zeros elsewhere. The windows
/// tile the plane, so each value is written once, as `0 + g`: bitwise the
/// zero-filled plane plus the scattered gradients, in one pass instead of
/// a fill then a scatter. An index outside its window (no forward made
/// it) leaves the window zero. f32 runs the vector kernel of the active
/// level (a row of L windows at a time: one compare per window position
/// picks `g` or zero, and an interleave writes each row's two columns);
/// the scalar loop is the reference (`spread`).
pub fn max_pool_2x2_backward<T: Real>(g: &[T], arg: &[u32], hw: (usize, usize), dx: &mut [T]) {
    let (h, w) = hw;
    let (ho, wo) = (h / 2, w / 2);
    assert!(
        g.len() >= ho * wo && arg.len() >= ho * wo && dx.len() >= h * w,
        "2x2 max pooling backward of a {h}x{w} plane"
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        use crate::real::{as_f32, as_f32_mut};
        let (gs, dxs) = (as_f32(g), as_f32_mut(dx));
        match crate::isa::active() {
            // SAFETY: active() names no level this CPU lacks
            crate::isa::Isa::Avx512 => return unsafe { avx512::spread(gs, arg, hw, dxs) },
            // SAFETY: as above
            crate::isa::Isa::Avx2 => return unsafe { avx2::spread(gs, arg, hw, dxs) },
            crate::isa::Isa::Portable => {}
        }
    }
    spread(g, arg, hw, dx)
}

multiversion! {
    /// [`max_pool_2x2_backward`] one window after the other: the reference
    /// of the vector kernels, and the kernel of f64 and CPUs without AVX2.
    fn spread<T: Real>(g: &[T], arg: &[u32], hw: (usize, usize), dx: &mut [T]) {
        let (h, w) = hw;
        let (ho, wo) = (h / 2, w / 2);
        let zero = T::zero();
        for oh in 0..ho {
            let (top, bottom) = dx[2 * oh * w..][..2 * w].split_at_mut(w);
            let (g_row, arg_row) = (&g[oh * wo..][..wo], &arg[oh * wo..][..wo]);
            for (ow, (&gv, &at)) in g_row.iter().zip(arg_row).enumerate() {
                let gv = zero + gv;
                let at = (at as usize).wrapping_sub(2 * oh * w + 2 * ow);
                let pick = |offset: usize| if at == offset { gv } else { zero };
                top[2 * ow] = pick(0);
                top[2 * ow + 1] = pick(1);
                bottom[2 * ow] = pick(w);
                bottom[2 * ow + 1] = pick(w + 1);
            }
            // an odd width's last column is in no window
            top[2 * wo..].fill(zero);
            bottom[2 * wo..].fill(zero);
        }
        // as is an odd height's last row
        dx[2 * ho * w..h * w].fill(zero);
    }
}

/// The vector form of [`spread`] at one level, from its module's
/// operations (`L` lanes; `load`, `load_indices`, `window_starts`,
/// `add_index`, `pick`, `interleave`, `store`), compiled with `$features`.
#[cfg(target_arch = "x86_64")]
macro_rules! vector_spread {
    ($features:literal) => {
        /// [`super::spread`] of f32, `L` windows of a row pair at a time. The
        /// caller checked the lengths (`max_pool_2x2_backward`).
        #[target_feature(enable = $features)]
        pub(super) fn spread(g: &[f32], arg: &[u32], (h, w): (usize, usize), dx: &mut [f32]) {
            let (ho, wo) = (h / 2, w / 2);
            for oh in 0..ho {
                let (top, bottom) = dx[2 * oh * w..][..2 * w].split_at_mut(w);
                let (g_row, arg_row) = (&g[oh * wo..][..wo], &arg[oh * wo..][..wo]);
                let mut j = 0;
                while j < wo {
                    let n = (wo - j).min(L);
                    let (gv, at) = (load(&g_row[j..j + n]), load_indices(&arg_row[j..j + n]));
                    // each window's top-left index in the plane
                    let a = add_index(window_starts(), (2 * oh * w + 2 * j) as i32);
                    let c = add_index(a, w as i32);
                    let (top_lo, top_hi) = interleave(pick(at, a, gv), pick(at, add_index(a, 1), gv));
                    let (bottom_lo, bottom_hi) = interleave(pick(at, c, gv), pick(at, add_index(c, 1), gv));
                    let (first, rest) = ((2 * n).min(L), (2 * n).saturating_sub(L));
                    store(&mut top[2 * j..][..first], top_lo);
                    store(&mut bottom[2 * j..][..first], bottom_lo);
                    if rest > 0 {
                        store(&mut top[2 * j + L..][..rest], top_hi);
                        store(&mut bottom[2 * j + L..][..rest], bottom_hi);
                    }
                    j += n;
                }
                // an odd width's last column is in no window
                top[2 * wo..].fill(0.0);
                bottom[2 * wo..].fill(0.0);
            }
            // as is an odd height's last row
            dx[2 * ho * w..h * w].fill(0.0);
        }
    };
}

/// The vector kernel of one level, from the operations its module defines
/// (`L` lanes; `load_pair`, `store`, `store_indices`; `evens`, `odds` and
/// `even_cols`; `relu`; `later_wins`, `select`, `select_indices`;
/// `in_order`, `indices_in_order`; `splat_index`, `add_index`), all
/// compiled with `$features`.
#[cfg(target_arch = "x86_64")]
macro_rules! vector_scan {
    ($features:literal) => {
        /// [`super::scan`] of f32, `L` outputs of a row at a time. The caller
        /// checked the lengths (`dispatch`), and each step reads only the
        /// `2n` values of each row its `n` windows cover.
        #[target_feature(enable = $features)]
        pub(super) fn scan<const INDEX: bool, const RELU: bool>(
            x: &[f32],
            (h, w): (usize, usize),
            y: &mut [f32],
            arg: &mut [u32],
        ) {
            let (ho, wo) = (h / 2, w / 2);
            for oh in 0..ho {
                let (r0, r1) = (&x[2 * oh * w..][..w], &x[(2 * oh + 1) * w..][..w]);
                let base = 2 * oh * w;
                let mut j = 0;
                while j < wo {
                    let n = (wo - j).min(L);
                    let ((a0, b0), (a1, b1)) = (load_pair(&r0[2 * j..][..2 * n]), load_pair(&r1[2 * j..][..2 * n]));
                    let mut window = [evens(a0, b0), odds(a0, b0), evens(a1, b1), odds(a1, b1)];
                    if RELU {
                        window = [relu(window[0]), relu(window[1]), relu(window[2]), relu(window[3])];
                    }
                    let [a, b, c, d] = window;
                    // (a vs b) vs (c vs d): the first of the largest, as the scalar scan
                    let (top_wins_b, bottom_wins_d) = (later_wins(a, b), later_wins(c, d));
                    let (top, bottom) = (select(top_wins_b, a, b), select(bottom_wins_d, c, d));
                    let bottom_wins = later_wins(top, bottom);
                    store(&mut y[oh * wo + j..][..n], in_order(select(bottom_wins, top, bottom)));
                    if INDEX {
                        let ia = add_index(even_cols(), (base + 2 * j) as i32);
                        let top_at = select_indices(top_wins_b, ia, add_index(ia, 1));
                        let ic = add_index(ia, w as i32);
                        let bottom_at = select_indices(bottom_wins_d, ic, add_index(ic, 1));
                        let at = select_indices(bottom_wins, top_at, bottom_at);
                        store_indices(&mut arg[oh * wo + j..][..n], indices_in_order(at));
                    }
                    j += n;
                }
            }
        }
    };
}

/// The AVX-512 operations of [`vector_scan`]: 16 lanes, masks in mask
/// registers, masked loads and stores for a row's last step.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const L: usize = 16;

    /// `count` ones from the lowest bit (`count <= 16`).
    #[inline]
    fn first(count: usize) -> __mmask16 {
        ((1u32 << count) - 1) as __mmask16
    }

    /// The values of `v` (at most 32) in two vectors, zeros after the last.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn load_pair(v: &[f32]) -> (__m512, __m512) {
        let (lo, hi) = (v.len().min(L), v.len().saturating_sub(L));
        let p = v.as_ptr();
        // SAFETY: the masks cover lo values at p and hi values at p + 16,
        // all inside v (lo + hi = v.len()); masked-off lanes are not read
        unsafe {
            let a = _mm512_maskz_loadu_ps(first(lo), p);
            let b = if hi > 0 { _mm512_maskz_loadu_ps(first(hi), p.add(L)) } else { _mm512_setzero_ps() };
            (a, b)
        }
    }

    /// The first `out.len()` (at most 16) lanes of `v` into `out`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn store(out: &mut [f32], v: __m512) {
        // SAFETY: the mask covers out.len() <= 16 values, all inside out
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr(), first(out.len()), v) }
    }

    /// [`store`] for indices.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn store_indices(out: &mut [u32], v: __m512i) {
        // SAFETY: as in store
        unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr() as *mut i32, first(out.len()), v) }
    }

    /// Even columns of the 32 values `a, b`, in the order of the in-lane
    /// shuffle: 128-bit lane `i` holds output columns `2i, 2i+1, 8+2i, 9+2i`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn evens(a: __m512, b: __m512) -> __m512 {
        _mm512_shuffle_ps::<0b10_00_10_00>(a, b)
    }

    /// The odd columns, in the order of [`evens`].
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn odds(a: __m512, b: __m512) -> __m512 {
        _mm512_shuffle_ps::<0b11_01_11_01>(a, b)
    }

    /// The input column of each lane of [`evens`] (twice its output column).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn even_cols() -> __m512i {
        _mm512_setr_epi32(0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30)
    }

    /// Where output column `c` sits in the shuffled order.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn order() -> __m512i {
        _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15)
    }

    /// The shuffled lanes in column order.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn in_order(v: __m512) -> __m512 {
        _mm512_permutexvar_ps(order(), v)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn indices_in_order(v: __m512i) -> __m512i {
        _mm512_permutexvar_epi32(order(), v)
    }

    /// `max(v, 0)` as `ReluAct`: `v > 0 ? v : +0` (vmaxps returns its second
    /// operand unless the first is greater: NaN and -0.0 give +0).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn relu(v: __m512) -> __m512 {
        _mm512_max_ps(v, _mm512_setzero_ps())
    }

    /// Lanes where `b` takes over from `a` (`takes_over(b, a)`): `a` is a
    /// number and not `a >= b` (so `b` greater, or `b` NaN).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn later_wins(a: __m512, b: __m512) -> __mmask16 {
        let a_number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(a, a);
        _mm512_mask_cmp_ps_mask::<_CMP_NGE_UQ>(a_number, a, b)
    }

    /// `b` where `k`, else `a`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn select(k: __mmask16, a: __m512, b: __m512) -> __m512 {
        _mm512_mask_blend_ps(k, a, b)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn select_indices(k: __mmask16, a: __m512i, b: __m512i) -> __m512i {
        _mm512_mask_blend_epi32(k, a, b)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn add_index(v: __m512i, k: i32) -> __m512i {
        _mm512_add_epi32(v, _mm512_set1_epi32(k))
    }

    vector_scan!("avx512f,avx512bw,avx512dq,avx512vl,fma");

    /// The first `v.len()` (at most 16) values, zeros after.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn load(v: &[f32]) -> __m512 {
        // SAFETY: the mask covers v.len() <= 16 values, all inside v
        unsafe { _mm512_maskz_loadu_ps(first(v.len()), v.as_ptr()) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn load_indices(v: &[u32]) -> __m512i {
        // SAFETY: as in load
        unsafe { _mm512_maskz_loadu_epi32(first(v.len()), v.as_ptr() as *const i32) }
    }

    /// `2k` in lane `k`: the first column of each of 16 windows in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn window_starts() -> __m512i {
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
    }

    /// `0 + g` where `at == here`, else +0 (the scalar loop's `pick`).
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn pick(at: __m512i, here: __m512i, g: __m512) -> __m512 {
        _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, here), _mm512_add_ps(_mm512_setzero_ps(), g))
    }

    /// `a0 b0 a1 b1 ...` over 32 lanes, in two vectors.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn interleave(a: __m512, b: __m512) -> (__m512, __m512) {
        let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
        (_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
    }

    vector_spread!("avx512f,avx512bw,avx512dq,avx512vl,fma");
}

/// The AVX2 operations of [`vector_scan`]: 8 lanes, masks as vectors, a
/// row's last step loading through masks and storing through a buffer
/// (AVX2's masked store is slow on AMD CPUs).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const L: usize = 8;

    /// Lanes below `count` set (all ones), the others clear.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn first(count: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// The values of `v` (at most 16) in two vectors, zeros after the last.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_pair(v: &[f32]) -> (__m256, __m256) {
        let p = v.as_ptr();
        if v.len() == 2 * L {
            // SAFETY: 16 values at p
            return unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(L))) };
        }
        let (lo, hi) = (v.len().min(L), v.len().saturating_sub(L));
        // SAFETY: the masks cover lo values at p and hi values at p + 8,
        // all inside v (lo + hi = v.len()); masked-off lanes are not read
        unsafe {
            let a = _mm256_maskload_ps(p, first(lo));
            let b = if hi > 0 { _mm256_maskload_ps(p.add(L), first(hi)) } else { _mm256_setzero_ps() };
            (a, b)
        }
    }

    /// The first `out.len()` (at most 8) lanes of `v` into `out`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store(out: &mut [f32], v: __m256) {
        if out.len() == L {
            // SAFETY: out holds 8 values
            return unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        }
        let mut buffer = [0.0f32; L];
        // SAFETY: buffer holds 8 values
        unsafe { _mm256_storeu_ps(buffer.as_mut_ptr(), v) };
        out.copy_from_slice(&buffer[..out.len()]);
    }

    /// [`store`] for indices.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn store_indices(out: &mut [u32], v: __m256i) {
        let mut buffer = [0u32; L];
        // SAFETY: buffer holds 8 values
        unsafe { _mm256_storeu_si256(buffer.as_mut_ptr() as *mut __m256i, v) };
        out.copy_from_slice(&buffer[..out.len()]);
    }

    /// Even columns of the 16 values `a, b`, in the order of the in-lane
    /// shuffle: output columns `0, 1, 4, 5 | 2, 3, 6, 7`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn evens(a: __m256, b: __m256) -> __m256 {
        _mm256_shuffle_ps::<0b10_00_10_00>(a, b)
    }

    /// The odd columns, in the order of [`evens`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn odds(a: __m256, b: __m256) -> __m256 {
        _mm256_shuffle_ps::<0b11_01_11_01>(a, b)
    }

    /// The input column of each lane of [`evens`] (twice its output column).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn even_cols() -> __m256i {
        _mm256_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14)
    }

    /// The shuffled lanes in column order: 64-bit pairs 0, 2, 1, 3.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn in_order(v: __m256) -> __m256 {
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn indices_in_order(v: __m256i) -> __m256i {
        _mm256_permute4x64_epi64::<0b11_01_10_00>(v)
    }

    /// `max(v, 0)` as `ReluAct` (see the AVX-512 form).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn relu(v: __m256) -> __m256 {
        _mm256_max_ps(v, _mm256_setzero_ps())
    }

    /// Lanes where `b` takes over from `a`, all ones (see the AVX-512 form).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn later_wins(a: __m256, b: __m256) -> __m256 {
        _mm256_and_ps(_mm256_cmp_ps::<_CMP_ORD_Q>(a, a), _mm256_cmp_ps::<_CMP_NGE_UQ>(a, b))
    }

    /// `b` where `k`, else `a`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn select(k: __m256, a: __m256, b: __m256) -> __m256 {
        _mm256_blendv_ps(a, b, k)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn select_indices(k: __m256, a: __m256i, b: __m256i) -> __m256i {
        _mm256_blendv_epi8(a, b, _mm256_castps_si256(k))
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn add_index(v: __m256i, k: i32) -> __m256i {
        _mm256_add_epi32(v, _mm256_set1_epi32(k))
    }

    vector_scan!("avx2,fma");

    /// The first `v.len()` (at most 8) values, zeros after.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load(v: &[f32]) -> __m256 {
        if v.len() == L {
            // SAFETY: 8 values at v
            return unsafe { _mm256_loadu_ps(v.as_ptr()) };
        }
        // SAFETY: the mask covers v.len() values, all inside v; masked-off lanes are not read
        unsafe { _mm256_maskload_ps(v.as_ptr(), first(v.len())) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn load_indices(v: &[u32]) -> __m256i {
        if v.len() == L {
            // SAFETY: 8 values at v
            return unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) };
        }
        // SAFETY: as in load
        unsafe { _mm256_maskload_epi32(v.as_ptr() as *const i32, first(v.len())) }
    }

    /// `2k` in lane `k`: the first column of each of 8 windows in order.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn window_starts() -> __m256i {
        _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
    }

    /// `0 + g` where `at == here`, else +0 (the scalar loop's `pick`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn pick(at: __m256i, here: __m256i, g: __m256) -> __m256 {
        let hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(at, here));
        _mm256_and_ps(hit, _mm256_add_ps(_mm256_setzero_ps(), g))
    }

    /// `a0 b0 a1 b1 ...` over 16 lanes, in two vectors.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn interleave(a: __m256, b: __m256) -> (__m256, __m256) {
        // a0 b0 a1 b1 | a4 b4 a5 b5   and   a2 b2 a3 b3 | a6 b6 a7 b7
        let (low, high) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        (_mm256_permute2f128_ps::<0x20>(low, high), _mm256_permute2f128_ps::<0x31>(low, high))
    }

    vector_spread!("avx2,fma");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{detected, Isa};

    /// Values that make windows hard: ties of every kind, both zeros, both
    /// infinities, NaNs with distinct payloads (a quiet and a signalling
    /// one), with the rest few distinct numbers (more ties).
    fn hard_plane(len: usize, seed: usize) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xffc0_1234),
            f32::from_bits(0x7f80_0001),
            1.0,
            -1.0,
        ];
        (0..len)
            .map(|i| {
                let r = (i * 7919 + seed * 104_729) % 1009;
                if r.is_multiple_of(3) {
                    special[r / 3 % special.len()]
                } else {
                    (r % 5) as f32 - 2.0
                }
            })
            .collect()
    }

    type Kernel = fn(&[f32], (usize, usize), &mut [f32], &mut [u32]);

    /// The vector kernels of every level this CPU has against the scalar
    /// scan, bitwise, values and indices, with and without ReLU, for every
    /// width 2..=40 and height 2..=9 (tails of every length, odd sizes);
    /// the output beyond the pooled plane is left alone.
    #[test]
    fn vector_kernels_are_the_scalar_scan() {
        let mut levels: Vec<(Isa, [Kernel; 3])> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if detected() >= Isa::Avx512 {
                // SAFETY (in each closure): the CPU has AVX-512 (detected above)
                levels.push((
                    Isa::Avx512,
                    [
                        |x, hw, y, a| unsafe { avx512::scan::<false, false>(x, hw, y, a) },
                        |x, hw, y, a| unsafe { avx512::scan::<true, false>(x, hw, y, a) },
                        |x, hw, y, a| unsafe { avx512::scan::<false, true>(x, hw, y, a) },
                    ],
                ));
            }
            if detected() >= Isa::Avx2 {
                // SAFETY (in each closure): the CPU has AVX2 (detected above)
                levels.push((
                    Isa::Avx2,
                    [
                        |x, hw, y, a| unsafe { avx2::scan::<false, false>(x, hw, y, a) },
                        |x, hw, y, a| unsafe { avx2::scan::<true, false>(x, hw, y, a) },
                        |x, hw, y, a| unsafe { avx2::scan::<false, true>(x, hw, y, a) },
                    ],
                ));
            }
        }
        for isa in [Isa::Avx512, Isa::Avx2] {
            if !levels.iter().any(|(l, _)| *l == isa) {
                eprintln!("pool kernels: {isa} skipped, this CPU does not have it");
            }
        }
        let references: [Kernel; 3] = [scan::<f32, false, false>, scan::<f32, true, false>, scan::<f32, false, true>];
        let names = ["values", "argmax", "relu"];
        let mut checked = 0;
        for h in 2..=9 {
            for w in 2..=40 {
                let x = hard_plane(h * w, h * 41 + w);
                let pooled = (h / 2) * (w / 2);
                for (k, reference) in references.iter().enumerate() {
                    let (mut want, mut want_at) = (vec![7.0f32; pooled + 3], vec![u32::MAX; pooled + 3]);
                    reference(&x, (h, w), &mut want, &mut want_at);
                    for (isa, kernels) in &levels {
                        let (mut got, mut got_at) = (vec![7.0f32; pooled + 3], vec![u32::MAX; pooled + 3]);
                        kernels[k](&x, (h, w), &mut got, &mut got_at);
                        let tag = format!("{isa} {} {h}x{w}", names[k]);
                        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got), bits(&want), "{tag}: values");
                        assert_eq!(got_at, want_at, "{tag}: indices");
                        checked += 1;
                    }
                }
            }
        }
        eprintln!("pool kernels: {checked} plane checks at {:?}", levels.iter().map(|(l, _)| l).collect::<Vec<_>>());
    }

    /// The one-pass backward is bitwise the zero-filled plane plus each
    /// gradient scattered to its maximum (a -0.0 gradient becomes +0.0 in
    /// both), for even and odd sizes.
    #[test]
    fn backward_is_fill_then_scatter() {
        for h in 2..=9 {
            for w in 2..=40 {
                let x = hard_plane(h * w, h * 43 + w);
                let pooled = (h / 2) * (w / 2);
                let (mut y, mut arg) = (vec![0.0f32; pooled], vec![0u32; pooled]);
                max_pool_2x2(&x, (h, w), &mut y, &mut arg);
                let g: Vec<f32> = (0..pooled).map(|i| if i % 4 == 1 { -0.0 } else { i as f32 - 3.5 }).collect();
                let mut want = vec![0.0f32; h * w];
                for (&gv, &a) in g.iter().zip(&arg) {
                    want[a as usize] += gv;
                }
                let mut got = vec![f32::NAN; h * w];
                max_pool_2x2_backward(&g, &arg, (h, w), &mut got);
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{h}x{w}");
            }
        }
    }

    /// The vector spreads of every level this CPU has against the scalar
    /// one, bitwise, for every width 2..=40 and height 2..=9, indices from
    /// the forward scan and indices outside their windows.
    #[test]
    fn vector_spreads_are_the_scalar_spread() {
        type Spread = fn(&[f32], &[u32], (usize, usize), &mut [f32]);
        let mut levels: Vec<(Isa, Spread)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if detected() >= Isa::Avx512 {
                // SAFETY: the CPU has AVX-512 (detected above)
                levels.push((Isa::Avx512, |g, a, hw, dx| unsafe { avx512::spread(g, a, hw, dx) }));
            }
            if detected() >= Isa::Avx2 {
                // SAFETY: the CPU has AVX2 (detected above)
                levels.push((Isa::Avx2, |g, a, hw, dx| unsafe { avx2::spread(g, a, hw, dx) }));
            }
        }
        for isa in [Isa::Avx512, Isa::Avx2] {
            if !levels.iter().any(|(l, _)| *l == isa) {
                eprintln!("pool spreads: {isa} skipped, this CPU does not have it");
            }
        }
        let mut checked = 0;
        for h in 2..=9 {
            for w in 2..=40 {
                let x = hard_plane(h * w, h * 47 + w);
                let pooled = (h / 2) * (w / 2);
                let (mut y, mut arg) = (vec![0.0f32; pooled], vec![0u32; pooled]);
                max_pool_2x2(&x, (h, w), &mut y, &mut arg);
                // every fifth index points outside its window
                arg.iter_mut().step_by(5).for_each(|a| *a = a.wrapping_add(2));
                let g: Vec<f32> = (0..pooled).map(|i| if i % 4 == 1 { -0.0 } else { i as f32 - 3.5 }).collect();
                let mut want = vec![f32::NAN; h * w];
                spread(&g, &arg, (h, w), &mut want);
                for (isa, kernel) in &levels {
                    let mut got = vec![f32::NAN; h * w];
                    kernel(&g, &arg, (h, w), &mut got);
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{isa} {h}x{w}");
                    checked += 1;
                }
            }
        }
        eprintln!("pool spreads: {checked} plane checks at {:?}", levels.iter().map(|(l, _)| l).collect::<Vec<_>>());
    }

    /// The scalar scan itself: the first maximum in row-major order, a NaN
    /// (the first, bits kept) beating any number, -0.0 before +0.0 kept,
    /// ReLU before the maximum.
    #[test]
    fn scan_picks_the_first_maximum() {
        let nan = f32::from_bits(0x7fc0_0042);
        let other_nan = f32::from_bits(0xffc0_0001);
        // (window a b / c d, value, its index in the 2x3 plane, value after relu)
        let cases: [([f32; 4], f32, u32, f32); 7] = [
            ([1.0, 3.0, 3.0, 2.0], 3.0, 1, 3.0),
            ([-0.0, 0.0, -1.0, 0.0], -0.0, 0, 0.0),
            ([0.0, -0.0, -1.0, -0.0], 0.0, 0, 0.0),
            ([5.0, 1.0, nan, other_nan], nan, 3, 5.0),
            ([other_nan, nan, 9.0, 1.0], other_nan, 0, 9.0),
            ([f32::NEG_INFINITY, -7.0, f32::INFINITY, 1.0], f32::INFINITY, 3, f32::INFINITY),
            ([-3.0, -2.0, nan, -1.0], nan, 3, 0.0),
        ];
        for (window, value, index, relu) in cases {
            // a 2x3 plane: the third column is outside every window
            let x = [window[0], window[1], 99.0, window[2], window[3], 99.0];
            let (mut y, mut at) = ([0.0f32], [0u32]);
            max_pool_2x2(&x, (2, 3), &mut y, &mut at);
            assert_eq!((y[0].to_bits(), at[0]), (value.to_bits(), index), "{window:?}");
            max_pool_2x2_values(&x, (2, 3), &mut y);
            assert_eq!(y[0].to_bits(), value.to_bits(), "{window:?} values");
            relu_max_pool_2x2(&x, (2, 3), &mut y);
            assert_eq!(y[0].to_bits(), relu.to_bits(), "{window:?} relu");
        }
    }
}
