//! The statistics every normalization layer takes: a mean and a variance
//! summed in f64, in one pass, about a shift. Batch norm reduces each
//! channel of an `(N, C, S)` view over its `N` runs of `S` values; layer
//! norm reduces each example's row, group norm each (example, group) row.
//!
//! One pass: `var = E[(x - k)²] - E[x - k]²`, with the shift `k` one of
//! the values being reduced. Unshifted (`k = 0`) the difference cancels
//! when the mean is large against the spread; with `k` a value of the set,
//! `var ≥ (mean - k)²/m`, so the rounding error of the f64 sums stays below
//! about `m·2⁻⁵³` of the variance. One pass instead of two (the mean, then
//! the squares about it) halves the reads, and for a large tensor the
//! second pass was the forward's bottleneck.

use std::ops::Range;

use super::lanes::{sums2, F64x8};
use crate::real::Real;

/// A tensor of shape `(N, C, ...)` viewed as `(N, C, S)`: `N` examples,
/// `C` channels, `S` values per channel and example (1 for `(N, C)` input,
/// `H·W` for images). Channel `ch` of example `i` is one run of `S` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ncs {
    pub n: usize,
    pub c: usize,
    pub s: usize,
}

impl Ncs {
    /// The view of a tensor of `shape` (at least `(N, C)`).
    pub fn of(shape: &[usize]) -> Ncs {
        let (n, c) = (shape[0], shape[1]);
        Ncs { n, c, s: shape[2..].iter().product() }
    }

    /// Values in the tensor.
    pub fn len(&self) -> usize {
        self.n * self.c * self.s
    }

    /// Whether the tensor holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per channel: `N·S`, the count batch norm averages over.
    pub fn per_channel(&self) -> usize {
        self.n * self.s
    }

    /// Where channel `ch` of example `i` lies.
    #[inline(always)]
    pub fn run(&self, i: usize, ch: usize) -> Range<usize> {
        let start = (i * self.c + ch) * self.s;
        start..start + self.s
    }
}

/// Mean and biased variance of channel `ch` in f64, in one pass over its
/// `N` runs ([`ShiftedSums`], shifted by the channel's first value).
pub fn channel_mean_var<T: Real>(x: &[T], ncs: Ncs, ch: usize) -> (f64, f64) {
    let prefetch = std::mem::size_of_val(x) >= super::PREFETCH_MIN_BYTES;
    let mut sums = ShiftedSums::new(x[ncs.run(0, ch).start]);
    for i in 0..ncs.n {
        if prefetch && i + 1 < ncs.n {
            super::prefetch(&x[ncs.run(i + 1, ch)]);
        }
        sums.add(&x[ncs.run(i, ch)]);
    }
    sums.mean_var()
}

/// Mean and biased variance of one row in f64, in one pass shifted by its
/// first value (layer norm's and group norm's rows). `(0, 0)` for no values.
pub fn row_mean_var<T: Real>(row: &[T]) -> (f64, f64) {
    let Some(&first) = row.first() else { return (0.0, 0.0) };
    let mut sums = ShiftedSums::new(first);
    sums.add(row);
    sums.mean_var()
}

/// Running sums for a mean and variance in one pass about a shift `k`
/// (see the module's comment): `Σ (x - k)`, `Σ (x - k)²` and the count.
/// Partial sums taken with the same shift over other values combine with
/// [`ShiftedSums::absorb`].
#[derive(Clone)]
pub struct ShiftedSums {
    shift: f64,
    k: F64x8,
    sum: f64,
    sum_sq: f64,
    count: usize,
}

impl ShiftedSums {
    pub fn new<T: Real>(shift: T) -> Self {
        let shift = shift.as_f64();
        ShiftedSums { shift, k: F64x8::splat(shift), sum: 0.0, sum_sq: 0.0, count: 0 }
    }

    #[inline]
    pub fn add<T: Real>(&mut self, values: &[T]) {
        let (s1, s2) = shifted_sums(values, self.k);
        self.sum += s1;
        self.sum_sq += s2;
        self.count += values.len();
    }

    /// Adds the sums of `other`, taken with the same shift over other values.
    pub fn absorb(&mut self, other: &ShiftedSums) {
        debug_assert_eq!(self.shift.to_bits(), other.shift.to_bits(), "sums with different shifts");
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.count += other.count;
    }

    /// `(mean, biased variance)`.
    pub fn mean_var(&self) -> (f64, f64) {
        let m = self.count as f64;
        let (shifted_mean, mean_sq) = (self.sum / m, self.sum_sq / m);
        (self.shift + shifted_mean, (mean_sq - shifted_mean * shifted_mean).max(0.0))
    }
}

multiversion! {
    /// `(Σ (v - k), Σ (v - k)²)` in eight f64 lanes.
    fn shifted_sums<T: Real>(values: &[T], k: F64x8) -> (f64, f64) {
        sums2(values, values, |v, _| (v - k, (v - k) * (v - k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mean and variance in f64 by the textbook two passes.
    fn two_pass(v: &[f64]) -> (f64, f64) {
        let m = v.len() as f64;
        let mean = v.iter().sum::<f64>() / m;
        (mean, v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / m)
    }

    #[test]
    fn one_pass_statistics_hold_on_a_large_mean_with_an_outlier_first() {
        // channel 1 of (3, 2, 37): mean 1e4, std about 1e-2, and its first
        // value (the shift) 1e4 + 50, far out
        let ncs = Ncs { n: 3, c: 2, s: 37 };
        let x: Vec<f64> = (0..ncs.len())
            .map(|i| {
                let (img, ch, j) = (i / (ncs.c * ncs.s), (i / ncs.s) % ncs.c, i % ncs.s);
                let noise = (((i * 7919) % 1000) as f64 / 1000.0 - 0.5) * 0.035;
                match (ch, img, j) {
                    (1, 0, 0) => 1e4 + 50.0,
                    (1, _, _) => 1e4 + noise,
                    _ => noise,
                }
            })
            .collect();
        let channel: Vec<f64> = (0..ncs.n).flat_map(|i| x[ncs.run(i, 1)].to_vec()).collect();
        let (want_mean, want_var) = two_pass(&channel);
        for (what, (mean, var)) in [("channel", channel_mean_var(&x, ncs, 1)), ("row", row_mean_var(&channel))] {
            assert!((mean - want_mean).abs() <= 1e-12 * want_mean, "{what}: mean {mean} vs {want_mean}");
            // unshifted, E[x²] - E[x]² (x² near 1e8) missed the variance (22.3,
            // from the outlier) by 7e-10 of itself; shifted, it is under 1e-10
            assert!((var - want_var).abs() <= 1e-10 * want_var, "{what}: variance {var} vs {want_var}");
        }
    }

    #[test]
    fn partial_sums_absorbed_equal_one_pass_and_an_empty_row_is_zero() {
        let v: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32) * 0.25 + 3.0).collect();
        let mut whole = ShiftedSums::new(v[0]);
        whole.add(&v);
        let mut parts = ShiftedSums::new(v[0]);
        for chunk in v.chunks(128) {
            let mut part = ShiftedSums::new(v[0]);
            part.add(chunk);
            parts.absorb(&part);
        }
        let ((m1, v1), (m2, v2)) = (whole.mean_var(), parts.mean_var());
        assert!((m1 - m2).abs() <= 1e-12 * m1.abs() && (v1 - v2).abs() <= 1e-12 * v1, "{m1} {v1} vs {m2} {v2}");
        assert_eq!(row_mean_var::<f32>(&[]), (0.0, 0.0));
    }
}
