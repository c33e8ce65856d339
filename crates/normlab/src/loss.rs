//! Mean softmax cross-entropy, as `F.cross_entropy(logits, labels)`.
//!
//! ```text
//! loss     = (1/N) Σₙ [ logsumexp(zₙ) - Σⱼ qₙⱼ zₙⱼ ]
//! dloss/dz = (softmax(z) - q) / N
//! q        = (1 - ε) · onehot(y) + ε / K       (label smoothing ε, K classes)
//! ```
//!
//! With ε = 0 (the default) `q` is the one-hot target and the loss is
//! `logsumexp(z) - z[y]`; with ε > 0 it is PyTorch's
//! `CrossEntropyLoss(label_smoothing=ε)`.

use crate::real::Real;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Mean softmax cross-entropy over a batch of logits, PyTorch's
/// `nn.CrossEntropyLoss()` (mean reduction, integer class labels); it keeps
/// the gradient with respect to the logits for the backward pass.
#[derive(Default)]
pub struct CrossEntropy<T: Real = f32> {
    grad: Tensor<T>,
    /// ε: the weight of the uniform distribution in the target.
    label_smoothing: f64,
    /// One row's `exp(z - max)`, computed once for the sum and the softmax.
    exps: Vec<f64>,
}

impl<T: Real> CrossEntropy<T> {
    /// A loss with no gradient yet (empty until the first [`Self::forward`]).
    pub fn new() -> Self {
        CrossEntropy { grad: Tensor::default(), label_smoothing: 0.0, exps: Vec::new() }
    }

    /// PyTorch's `CrossEntropyLoss(label_smoothing=epsilon)`: the target
    /// is `(1 - ε)` on the label and `ε / K` on every class. Refuses ε
    /// outside `[0, 1)`.
    pub fn with_label_smoothing(epsilon: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&epsilon) {
            return Err(Error::config(
                "--label-smoothing",
                format!("{epsilon} must be in [0, 1), e.g. --label-smoothing 0.1"),
            ));
        }
        Ok(CrossEntropy { label_smoothing: epsilon, ..Self::new() })
    }

    /// ε, the label smoothing.
    pub fn label_smoothing(&self) -> f64 {
        self.label_smoothing
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
            let eps = self.label_smoothing;
            if eps == 0.0 {
                total += max + sum_exp.ln() - z[y].as_f64();
                for (j, (gj, &e)) in g.iter_mut().zip(&self.exps).enumerate() {
                    let p = e / sum_exp;
                    *gj = T::from_f64((p - if j == y { 1.0 } else { 0.0 }) * inv_n);
                }
            } else {
                let uniform = eps / k as f64;
                let target = |j: usize| uniform + if j == y { 1.0 - eps } else { 0.0 };
                // Σⱼ qⱼ = 1, so logsumexp(z) - Σⱼ qⱼ zⱼ = Σⱼ qⱼ (-log softmax(z)ⱼ)
                let weighted: f64 = z.iter().enumerate().map(|(j, v)| target(j) * v.as_f64()).sum();
                total += max + sum_exp.ln() - weighted;
                for (j, (gj, &e)) in g.iter_mut().zip(&self.exps).enumerate() {
                    *gj = T::from_f64((e / sum_exp - target(j)) * inv_n);
                }
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
