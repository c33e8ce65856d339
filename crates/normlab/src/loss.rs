//! Mean softmax cross-entropy, as `F.cross_entropy(logits, labels)`.
//!
//! ```text
//! loss     = (1/N) Σₙ [ logsumexp(zₙ) - zₙ[yₙ] ]
//! dloss/dz = (softmax(z) - onehot(y)) / N
//! ```

use crate::real::Real;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Mean softmax cross-entropy over a batch of logits, PyTorch's
/// `nn.CrossEntropyLoss()` (mean reduction, integer class labels); it keeps
/// the gradient with respect to the logits for the backward pass.
#[derive(Default)]
pub struct CrossEntropy<T: Real = f32> {
    grad: Tensor<T>,
    /// One row's `exp(z - max)`, computed once for the sum and the softmax.
    exps: Vec<f64>,
}

impl<T: Real> CrossEntropy<T> {
    /// A loss with no gradient yet (empty until the first [`Self::forward`]).
    pub fn new() -> Self {
        CrossEntropy { grad: Tensor::default(), exps: Vec::new() }
    }

    /// Returns the mean loss over the `N` rows of `logits` `(N, classes)`
    /// (computed in f64) and how many rows the arg-max got right (ties go to
    /// the lowest class), and keeps `dloss/dlogits` for [`Self::grad`]. Fails
    /// on a shape mismatch or a label out of range.
    pub fn forward(&mut self, logits: &Tensor<T>, labels: &[usize]) -> Result<(f64, usize)> {
        if logits.rank() != 2 || logits.dim(0) != labels.len() {
            return Err(Error::shape(
                "CrossEntropy",
                format!("expected logits (N, classes) for {} labels, got {:?}", labels.len(), logits.shape()),
            ));
        }
        let (n, k) = (logits.dim(0), logits.dim(1));
        if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
            return Err(Error::shape("CrossEntropy", format!("label {bad} is out of range for {k} classes")));
        }
        self.grad.resize(logits.shape());
        let inv_n = 1.0 / n as f64;
        let mut total = 0.0;
        let mut correct = 0;
        for ((z, g), &y) in logits.data().chunks_exact(k).zip(self.grad.data_mut().chunks_exact_mut(k)).zip(labels) {
            let max = z.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.as_f64()));
            self.exps.clear();
            self.exps.extend(z.iter().map(|v| (v.as_f64() - max).exp()));
            let sum_exp: f64 = self.exps.iter().sum();
            total += max + sum_exp.ln() - z[y].as_f64();
            for (j, (gj, &e)) in g.iter_mut().zip(&self.exps).enumerate() {
                let p = e / sum_exp;
                *gj = T::from_f64((p - if j == y { 1.0 } else { 0.0 }) * inv_n);
            }
            let argmax = (0..k).fold(0, |best, j| if z[j] > z[best] { j } else { best });
            correct += (argmax == y) as usize;
        }
        Ok((total * inv_n, correct))
    }

    /// `dloss/dlogits` from the last forward.
    pub fn grad(&self) -> &Tensor<T> {
        &self.grad
    }
}

/// Softmax of each row (over the last dimension), in f64, for predictions:
/// `F.softmax(logits, dim=-1)`.
pub fn softmax_rows<T: Real>(logits: &Tensor<T>) -> Vec<Vec<f64>> {
    let k = logits.dim(logits.rank() - 1);
    logits
        .data()
        .chunks_exact(k)
        .map(|z| {
            let max = z.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.as_f64()));
            let e: Vec<f64> = z.iter().map(|v| (v.as_f64() - max).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}
