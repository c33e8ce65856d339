//! Eight f64 lanes as one value, for the reductions that accumulate in f64,
//! and the orders in which the lanes of a vector accumulator are added
//! ([`sum8`], [`sum16`], [`sum_widened`]): every kernel reduces its lanes
//! through these, so a reduction's order is written down once.
//!
//! ```
//! use normlab::kernels::lanes::F64x8;
//! let v = F64x8::widen(&[1.0f32, 2., 3., 4., 5., 6., 7., 8.]);
//! let w = (v - F64x8::splat(1.0)) * v;
//! assert_eq!(w.to_array(), [0., 2., 6., 12., 20., 30., 42., 56.]);
//! ```
//!
//! The lanes are a plain `[f64; 8]` whose operations are written lane by
//! lane and always inlined, so that in a kernel compiled for AVX-512 (see
//! the `multiversion!` macro) each becomes one 8-lane instruction, and in
//! the AVX2 and portable versions two or four narrower ones. Every
//! operation rounds like its scalar form (no fused multiply-add), so the
//! results are the same in every version.

use std::ops::{Add, Mul, Sub};

use crate::real::Real;

pub const LANES: usize = 8;

mod imp {
    #[derive(Clone, Copy)]
    pub struct Repr([f64; 8]);

    #[inline(always)]
    pub fn splat(v: f64) -> Repr {
        Repr([v; 8])
    }
    #[inline(always)]
    pub fn from_f32(p: &[f32; 8]) -> Repr {
        Repr(p.map(|v| v as f64))
    }
    #[inline(always)]
    pub fn from_f64(p: &[f64; 8]) -> Repr {
        Repr(*p)
    }
    #[inline(always)]
    pub fn to_array(v: Repr) -> [f64; 8] {
        v.0
    }
    #[inline(always)]
    pub fn add(a: Repr, b: Repr) -> Repr {
        Repr(std::array::from_fn(|l| a.0[l] + b.0[l]))
    }
    #[inline(always)]
    pub fn sub(a: Repr, b: Repr) -> Repr {
        Repr(std::array::from_fn(|l| a.0[l] - b.0[l]))
    }
    #[inline(always)]
    pub fn mul(a: Repr, b: Repr) -> Repr {
        Repr(std::array::from_fn(|l| a.0[l] * b.0[l]))
    }
}

/// Eight f64 values operated on lane by lane.
#[derive(Clone, Copy)]
pub struct F64x8(imp::Repr);

impl F64x8 {
    #[inline(always)]
    pub fn splat(v: f64) -> Self {
        F64x8(imp::splat(v))
    }

    /// Eight values of any [`Real`], converted exactly to f64.
    #[inline(always)]
    pub fn widen<T: Real>(chunk: &[T; LANES]) -> Self {
        F64x8(imp::from_f64(&chunk.map(|v| v.as_f64())))
    }

    #[inline(always)]
    pub fn to_array(self) -> [f64; LANES] {
        imp::to_array(self.0)
    }

    #[inline(always)]
    pub fn from_f32(p: &[f32; LANES]) -> Self {
        F64x8(imp::from_f32(p))
    }

    #[inline(always)]
    pub fn from_f64(p: &[f64; LANES]) -> Self {
        F64x8(imp::from_f64(p))
    }
}

impl Add for F64x8 {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        F64x8(imp::add(self.0, o.0))
    }
}

impl Sub for F64x8 {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        F64x8(imp::sub(self.0, o.0))
    }
}

impl Mul for F64x8 {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        F64x8(imp::mul(self.0, o.0))
    }
}

/// `(Σ f(a_i, b_i).0, Σ f(a_i, b_i).1)` in f64, in one pass.
///
/// The order is fixed by the data alone: value `i` goes to lane `i mod 8` of
/// accumulator `(i / 8) mod 2`, each accumulator adds its values in order,
/// the two are added lane by lane, then the lanes pairwise
/// ([`super::sum8`]). Two accumulators per sum, because one f64 add waits
/// for the previous (4 cycles), and with one accumulator per sum the
/// reductions over a large tensor ran at the adder's latency, not at memory
/// speed.
#[inline(always)]
pub fn sums2<T: Real>(a: &[T], b: &[T], f: impl Fn(F64x8, F64x8) -> (F64x8, F64x8)) -> (f64, f64) {
    assert_eq!(a.len(), b.len(), "sums2: operands of different lengths");
    let ((ac, ar), (bc, br)) = (a.as_chunks::<{ 2 * LANES }>(), b.as_chunks::<{ 2 * LANES }>());
    let zero = F64x8::splat(0.0);
    let (mut s1, mut s2) = ([zero; 2], [zero; 2]);
    for (ca, cb) in ac.iter().zip(bc) {
        let (ha, hb) = (ca.as_chunks::<LANES>().0, cb.as_chunks::<LANES>().0);
        for h in 0..2 {
            let (u, v) = f(F64x8::widen(&ha[h]), F64x8::widen(&hb[h]));
            s1[h] = s1[h] + u;
            s2[h] = s2[h] + v;
        }
    }
    // the rest (under 16 values) in chunks of 8, the last one padded and
    // added only in its real lanes
    let (mut t1, mut t2) = (s1.map(F64x8::to_array), s2.map(F64x8::to_array));
    for (h, (ra, rb)) in ar.chunks(LANES).zip(br.chunks(LANES)).enumerate() {
        let (mut pa, mut pb) = ([T::zero(); LANES], [T::zero(); LANES]);
        pa[..ra.len()].copy_from_slice(ra);
        pb[..rb.len()].copy_from_slice(rb);
        let (u, v) = f(F64x8::widen(&pa), F64x8::widen(&pb));
        let (u, v) = (u.to_array(), v.to_array());
        for l in 0..ra.len() {
            t1[h][l] += u[l];
            t2[h][l] += v[l];
        }
    }
    let fold = |t: [[f64; LANES]; 2]| sum8(std::array::from_fn(|l| t[0][l] + t[1][l]));
    (fold(t1), fold(t2))
}

/// The eight lanes of a vector accumulator added pairwise in a fixed order
/// (the order every reduction here uses, so results do not depend on threads).
#[inline(always)]
pub fn sum8<T: Real>(v: [T; 8]) -> T {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// Sixteen lanes added in a fixed order in `T`: the halves lane by lane,
/// then [`sum8`]; the total widened to f64.
#[inline]
pub fn sum16<T: Real>(lanes: &[T; 16]) -> f64 {
    sum8(std::array::from_fn(|l| lanes[l] + lanes[l + 8])).as_f64()
}

/// f32 lanes widened to f64 and added in lane order (the fused
/// convolution + batch-norm block's statistics, whose lanes each hold a sum
/// of few values, so the f64 total loses nothing to the order).
#[inline]
pub fn sum_widened(lanes: &[f32]) -> f64 {
    lanes.iter().map(|&x| x as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same sums in the documented order, in scalar code.
    fn reference(a: &[f32], b: &[f32], mu: f64) -> (f64, f64) {
        let (mut s1, mut s2) = ([[0.0f64; 8]; 2], [[0.0f64; 8]; 2]);
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let (x, y) = (x as f64, y as f64);
            s1[(i / 8) % 2][i % 8] += x;
            s2[(i / 8) % 2][i % 8] += x * (y - mu);
        }
        let fold = |t: [[f64; 8]; 2]| sum8(std::array::from_fn(|l| t[0][l] + t[1][l]));
        (fold(s1), fold(s2))
    }

    #[test]
    fn sums2_is_bitwise_the_scalar_lane_order() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 31, 64, 3136 + 13] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.3).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 104729) % 997) as f32 * 1e-3 + 1e4).collect();
            let mu = 1e4 + 0.37;
            let m = F64x8::splat(mu);
            let got = sums2(&a, &b, |x, y| (x, x * (y - m)));
            let want = reference(&a, &b, mu);
            assert_eq!(got.0.to_bits(), want.0.to_bits(), "sum, length {len}");
            assert_eq!(got.1.to_bits(), want.1.to_bits(), "weighted sum, length {len}");
        }
    }

    #[test]
    fn widen_is_exact_for_f64_and_f32() {
        let x = [1.0f64 + 1e-15, -2.5, 3e300, 0.0, -0.0, 1e-310, 7.0, 8.0];
        assert_eq!(F64x8::widen(&x).to_array().map(f64::to_bits), x.map(f64::to_bits));
        let y = [f32::MAX, f32::MIN_POSITIVE, 1.0 + f32::EPSILON, -3.0, 0.1, 1e-40, 5.0, 6.0];
        assert_eq!(F64x8::widen(&y).to_array(), y.map(|v| v as f64));
    }
}
