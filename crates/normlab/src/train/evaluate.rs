//! Evaluation in prediction mode: loss, accuracy, confusion matrix.

use serde::{Deserialize, Serialize};

use super::fill_batch;
use crate::data::Split;
use crate::loss::CrossEntropy;
use crate::models::Sequential;
use crate::tensor::Tensor;
use crate::threads::keep_pool_awake;
use crate::{Error, Result};

/// Loss, accuracy and confusion matrix in prediction mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub examples: usize,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified right.
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    /// Accuracy of each true class.
    pub fn per_class_accuracy(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 {
                    f64::NAN
                } else {
                    row[i] as f64 / total as f64
                }
            })
            .collect()
    }
}

/// Evaluates `net` in prediction mode on the first `limit` examples of `data`
/// (all by default) and leaves the network in the mode it was in.
pub fn evaluate(
    net: &mut Sequential<f32>,
    data: &Split,
    batch_size: usize,
    limit: Option<usize>,
) -> Result<Evaluation> {
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    if n == 0 {
        return Err(Error::config("validation data", "the validation set is empty"));
    }
    let mode = net.mode();
    net.eval();
    let classes = 10;
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..n).collect();
    let result = (|| {
        for idx in indices.chunks(batch_size) {
            fill_batch(data, idx, &mut x, &mut labels);
            // the pool kept awake through each batch, as in training
            let logits = keep_pool_awake(|| net.forward(&x))?;
            let mut ce = CrossEntropy::new();
            let (loss, _) = ce.forward(logits, &labels)?;
            loss_sum += loss * idx.len() as f64;
            let k = logits.dim(1);
            for (row, &y) in logits.data().chunks_exact(k).zip(&labels) {
                let pred = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                confusion[y][pred.min(classes - 1)] += 1;
            }
        }
        Ok(())
    })();
    net.set_mode(mode);
    result?;
    let correct: u64 = (0..classes).map(|i| confusion[i][i]).sum();
    Ok(Evaluation { examples: n, loss: loss_sum / n as f64, accuracy: correct as f64 / n as f64, confusion })
}
