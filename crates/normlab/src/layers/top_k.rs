//! Top-k sparsification (the chapter's exercise 7: "does sparsification
//! compression act as a regularizer?"): per example, keep the k values of
//! largest magnitude and set the others to zero.
//!
//! For an input `(N, *)` with d values per example, `k = max(1, round(f·d))`
//! for the fraction f:
//!
//! ```text
//! y_i  = x_i · mask_i,    mask_i = 1 if |x_i| is among the k largest of its example, else 0
//! dx_i = dy_i · mask_i    (the gradient flows only through the kept values)
//! ```
//!
//! Ties at the k-th magnitude are broken by position (the earlier value is
//! kept), so exactly k values survive. Unlike dropout the layer is a
//! deterministic function of its input and behaves the same in training and
//! prediction: the next layer always sees k non-zero values per example,
//! with no rescaling to undo.

use super::{check_built, check_forward_ran, check_grad, Layer, Mode};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Keeps the `k` largest-magnitude values of each example (module docs).
pub struct TopK<T: Real = f32> {
    fraction: f64,
    example: Vec<usize>,
    per_example: usize,
    keep: usize,
    mask: Vec<bool>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> TopK<T> {
    /// Keeps `fraction` (in (0, 1]) of each example's values.
    pub fn new(fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(Error::config(
                "top-k fraction",
                format!("{fraction} is not in (0, 1]; e.g. 0.25 keeps a quarter of the units"),
            ));
        }
        Ok(TopK {
            fraction,
            example: Vec::new(),
            per_example: 0,
            keep: 0,
            mask: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        })
    }
    /// Values kept per example (after build).
    pub fn keep(&self) -> usize {
        self.keep
    }
}

impl<T: Real> Layer<T> for TopK<T> {
    fn kind(&self) -> String {
        format!("TopK(fraction={})", self.fraction)
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        let d: usize = input.iter().product();
        if d == 0 {
            return Err(Error::shape("TopK", format!("empty input {input:?}")));
        }
        self.example = input.to_vec();
        self.per_example = d;
        self.keep = ((self.fraction * d as f64).round() as usize).clamp(1, d);
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("TopK", self.per_example > 0)?;
        super::check_input("TopK", x, &self.example)?;
        let (d, k) = (self.per_example, self.keep);
        self.y.resize(x.shape());
        self.mask.clear();
        self.mask.resize(x.numel(), false);
        let mut order: Vec<usize> = Vec::with_capacity(d);
        for ((xr, yr), mr) in x.data().chunks(d).zip(self.y.data_mut().chunks_mut(d)).zip(self.mask.chunks_mut(d)) {
            order.clear();
            order.extend(0..d);
            if k < d {
                // larger magnitude first; equal magnitudes by position
                order.select_nth_unstable_by(k - 1, |&a, &b| {
                    xr[b].as_f64().abs().total_cmp(&xr[a].as_f64().abs()).then(a.cmp(&b))
                });
            }
            for &i in &order[..k] {
                mr[i] = true;
            }
            for ((yv, &xv), &on) in yr.iter_mut().zip(xr).zip(mr.iter()) {
                *yv = if on { xv } else { T::zero() };
            }
        }
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("TopK", self.y.shape(), x.shape())?;
        check_grad("TopK", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            for ((d, &g), &on) in self.dx.data_mut().iter_mut().zip(dy.data()).zip(&self.mask) {
                *d = if on { g } else { T::zero() };
            }
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
}
