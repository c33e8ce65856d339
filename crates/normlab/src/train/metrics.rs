//! What one epoch of training reports, as written to `metrics.csv` and
//! printed by `normlab train --json`.

use serde::{Deserialize, Serialize};

/// One epoch's losses, accuracies and times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Counted from 1.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's training batches (training mode).
    pub train_loss: f64,
    /// Fraction of training examples classified right during the epoch.
    pub train_acc: f64,
    /// Mean cross-entropy on the validation (test) set in prediction mode.
    pub val_loss: f64,
    /// Fraction of validation examples classified right in prediction mode.
    pub val_acc: f64,
    /// Wall time of the training batches alone, without evaluation.
    pub train_seconds: f64,
    /// Wall time of the evaluation on the validation set.
    pub eval_seconds: f64,
    /// The learning rate of the epoch's first step (a schedule may change
    /// it from step to step); absent from histories of runs recorded
    /// before schedules, whose rate was their `lr` throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

impl EpochMetrics {
    /// The header line of `metrics.csv`, in the order of [`EpochMetrics::csv_row`].
    pub const CSV_HEADER: &'static str = "epoch,train_loss,train_acc,val_loss,val_acc,train_seconds,eval_seconds,lr";

    /// One line of `metrics.csv` (no newline).
    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.4},{:.4},{}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.val_loss,
            self.val_acc,
            self.train_seconds,
            self.eval_seconds,
            self.lr.map_or(String::new(), |lr| format!("{lr:.6e}"))
        )
    }
}
