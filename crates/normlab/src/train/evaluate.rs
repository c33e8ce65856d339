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
/// (all by default) and leaves the network in the mode it was in. The
/// number of classes is the width of the network's output: the confusion
/// matrix is that square, and a label at or above it is an error.
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
    if batch_size == 0 {
        return Err(Error::config("eval batch size", "must be at least 1"));
    }
    let mode = net.mode();
    net.eval();
    // sized by the first batch's logits: (N, classes)
    let mut confusion: Vec<Vec<u64>> = Vec::new();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut loss_sum = 0.0;
    let indices: Vec<usize> = (0..n).collect();
    let result = (|| {
        for idx in indices.chunks(batch_size) {
            fill_batch(data, idx, &mut x, &mut labels);
            // the pool kept awake through each batch, as in training;
            // predict is eval mode's forward, bitwise, in cache-sized chunks
            let logits = keep_pool_awake(|| net.predict(&x))?;
            // checks the shape and that every label is below the width
            let mut ce = CrossEntropy::new();
            let (loss, _) = ce.forward(logits, &labels)?;
            loss_sum += loss * idx.len() as f64;
            let k = logits.dim(1);
            if confusion.is_empty() {
                confusion = vec![vec![0u64; k]; k];
            }
            for (row, &y) in logits.data().chunks_exact(k).zip(&labels) {
                let pred = (0..k).fold(0, |best, j| if row[j] > row[best] { j } else { best });
                confusion[y][pred] += 1;
            }
        }
        Ok(())
    })();
    net.set_mode(mode);
    result?;
    let correct: u64 = (0..confusion.len()).map(|i| confusion[i][i]).sum();
    Ok(Evaluation { examples: n, loss: loss_sum / n as f64, accuracy: correct as f64 / n as f64, confusion })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{Flatten, Linear};

    /// A 3-class network: the confusion matrix is 3x3, each count where
    /// the argmax of the logits puts it, and a label of 3 is refused.
    #[test]
    fn any_number_of_classes() {
        let mut net = Sequential::<f32>::new().push(Flatten::new()).push(Linear::new(3));
        net.build(&[1, 1, 3], &mut crate::rng::seeded(0)).unwrap();
        // the identity: image pixel j is logit j, so the brightest pixel is the prediction
        for (_, s) in net.state_mut() {
            if let crate::layers::StateMut::Param { value, .. } = s {
                let shape = value.shape().to_vec();
                for (i, v) in value.data_mut().iter_mut().enumerate() {
                    *v = if shape.len() == 2 && i / shape[1] == i % shape[1] { 1.0 } else { 0.0 };
                }
            }
        }
        let images = vec![255, 0, 0, /**/ 0, 255, 0, /**/ 0, 0, 255, /**/ 255, 0, 0];
        let split = Split { images, labels: vec![0, 1, 2, 2], channels: 1, rows: 1, cols: 3 };
        let e = evaluate(&mut net, &split, 3, None).unwrap();
        assert_eq!(e.confusion, vec![vec![1, 0, 0], vec![0, 1, 0], vec![1, 0, 1]]);
        assert_eq!(e.accuracy, 0.75);
        assert_eq!(e.per_class_accuracy(), vec![1.0, 1.0, 0.5]);
        let bad = Split { labels: vec![0, 1, 3, 2], ..split };
        let err = evaluate(&mut net, &bad, 4, None).unwrap_err().to_string();
        assert!(err.contains("label 3 is out of range for 3 classes"), "{err}");
    }
}
