//! What one epoch of training reports, as written to `metrics.csv` and
//! printed by `normlab train --json`.

use serde::{Deserialize, Serialize};

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
    pub val_acc: f64,
    /// Wall time of the training batches alone, without evaluation.
    pub train_seconds: f64,
    pub eval_seconds: f64,
}

impl EpochMetrics {
    pub const CSV_HEADER: &'static str = "epoch,train_loss,train_acc,val_loss,val_acc,train_seconds,eval_seconds";

    pub fn csv_row(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.4},{:.4}",
            self.epoch,
            self.train_loss,
            self.train_acc,
            self.val_loss,
            self.val_acc,
            self.train_seconds,
            self.eval_seconds
        )
    }
}
