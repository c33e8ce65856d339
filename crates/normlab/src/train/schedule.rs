//! Learning-rate schedules, evaluated before every step (batch) from the
//! step's index alone, so a resumed run takes the same rates as one that
//! never stopped. With `t` the step (from 0), `S` steps per epoch, `T`
//! steps in all, `W` warm-up steps and `lr` the base rate:
//!
//! ```text
//! warm-up (constant, step, cosine):  lr · t / W                      for t < W
//! constant:   lr
//! step:       lr · gamma^floor(floor(t / S) / step_size)  (StepLR, stepped each epoch)
//! cosine:     lr · (1 + cos(π · (t - W) / (T - W))) / 2   (CosineAnnealingLR, T_max = T - W, per step)
//! one-cycle:  OneCycleLR(max_lr = lr, total_steps = T, pct_start = W / T (0.3 without
//!             warm-up), div_factor = 25, final_div_factor = 1e4, anneal cos,
//!             cycle_momentum = False), per step
//! ```
//!
//! The warm-up is the linear one of Hugging Face's
//! `get_*_schedule_with_warmup` (a `LambdaLR`), and tools/make_fixtures.py
//! checks every formula against PyTorch's schedulers.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The shape of a schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    #[default]
    Constant,
    /// Multiplied by `gamma` every `step_size` epochs (`StepLR`).
    Step,
    /// Half a cosine from the base rate down to 0 over the run (`CosineAnnealingLR`).
    Cosine,
    /// Up from `lr/25` to `lr`, then down to `lr/25e4`, both halves of a cosine (`OneCycleLR`).
    OneCycle,
}

impl ScheduleKind {
    /// Every kind, by name.
    pub const NAMES: [&'static str; 4] = ["constant", "step", "cosine", "one-cycle"];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Step => "step",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::OneCycle => "one-cycle",
        }
    }

    /// Whether its rates depend on the total number of steps (so the
    /// number of epochs cannot change once it started).
    pub fn depends_on_length(&self) -> bool {
        matches!(self, ScheduleKind::Cosine | ScheduleKind::OneCycle)
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "constant" => ScheduleKind::Constant,
            "step" => ScheduleKind::Step,
            "cosine" => ScheduleKind::Cosine,
            "one-cycle" | "onecycle" => ScheduleKind::OneCycle,
            _ => return Err(format!("'{s}' is not a schedule; give one of {}", Self::NAMES.join(", "))),
        })
    }
}

/// A learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Which schedule.
    pub kind: ScheduleKind,
    /// Epochs of linear warm-up (fractions allowed); for one-cycle, its
    /// rising phase (`None`: 30% of the run, OneCycleLR's `pct_start`).
    pub warmup_epochs: Option<f64>,
    /// Step: epochs between multiplications by `gamma`.
    pub step_size: Option<usize>,
    /// Step: the factor (0.1, StepLR's default).
    pub gamma: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::constant()
    }
}

/// OneCycleLR's defaults.
const ONE_CYCLE_PCT_START: f64 = 0.3;
const ONE_CYCLE_DIV: f64 = 25.0;
const ONE_CYCLE_FINAL_DIV: f64 = 1e4;

impl Schedule {
    /// The base rate throughout: the chapter's.
    pub fn constant() -> Self {
        Schedule { kind: ScheduleKind::Constant, warmup_epochs: None, step_size: None, gamma: 0.1 }
    }

    /// `kind` with no warm-up (one-cycle: its default rise), `gamma` 0.1.
    pub fn of(kind: ScheduleKind) -> Self {
        Schedule { kind, ..Schedule::constant() }
    }

    /// Checks the settings against a run of `epochs` epochs; errors name
    /// the command-line option.
    pub fn validate(&self, epochs: usize) -> Result<()> {
        if let Some(w) = self.warmup_epochs {
            if !(w >= 0.0 && w.is_finite()) || w > epochs as f64 {
                return Err(Error::config(
                    "--warmup-epochs",
                    format!("{w} must be a number of epochs from 0 to the run's {epochs}"),
                ));
            }
            if self.kind == ScheduleKind::OneCycle && w == 0.0 {
                return Err(Error::config(
                    "--warmup-epochs",
                    "one-cycle needs a rising phase: give more than 0 epochs (default 30% of the run)",
                ));
            }
        }
        match (self.kind, self.step_size) {
            (ScheduleKind::Step, None) => {
                return Err(Error::config(
                    "--step-size",
                    "--schedule step needs --step-size EPOCHS, e.g. --step-size 3",
                ))
            }
            (ScheduleKind::Step, Some(0)) => return Err(Error::config("--step-size", "must be at least 1 epoch")),
            (ScheduleKind::Step, _) => {}
            (_, Some(_)) => {
                return Err(Error::config("--step-size", "is for --schedule step; leave it out or add --schedule step"))
            }
            _ => {}
        }
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(Error::config("--gamma", format!("{} must be a positive number, e.g. 0.1", self.gamma)));
        }
        Ok(())
    }

    /// The warm-up in steps for `steps_per_epoch` steps an epoch.
    fn warmup_steps(&self, steps_per_epoch: usize, total: usize) -> usize {
        let epochs = match (self.kind, self.warmup_epochs) {
            (ScheduleKind::OneCycle, None) => return ((ONE_CYCLE_PCT_START * total as f64).round() as usize).max(1),
            (_, w) => w.unwrap_or(0.0),
        };
        ((epochs * steps_per_epoch as f64).round() as usize).min(total)
    }

    /// The learning rate of step `t` (from 0) for base rate `lr`, with
    /// `steps_per_epoch` steps an epoch and `total` steps in all.
    pub fn lr(&self, lr: f64, t: usize, steps_per_epoch: usize, total: usize) -> f64 {
        let warmup = self.warmup_steps(steps_per_epoch, total);
        if self.kind != ScheduleKind::OneCycle && t < warmup {
            return lr * t as f64 / warmup as f64;
        }
        match self.kind {
            ScheduleKind::Constant => lr,
            ScheduleKind::Step => {
                let epoch = t / steps_per_epoch.max(1);
                lr * self.gamma.powi((epoch / self.step_size.unwrap_or(1).max(1)) as i32)
            }
            ScheduleKind::Cosine => {
                let span = total.saturating_sub(warmup).max(1) as f64;
                lr * (1.0 + (std::f64::consts::PI * (t - warmup) as f64 / span).cos()) / 2.0
            }
            ScheduleKind::OneCycle => {
                // OneCycleLR's two phases: they end at steps pct·T - 1 and T - 1
                let (initial, min) = (lr / ONE_CYCLE_DIV, lr / ONE_CYCLE_DIV / ONE_CYCLE_FINAL_DIV);
                let pct_start = warmup as f64 / total.max(1) as f64;
                let end_up = pct_start * total as f64 - 1.0;
                let end_down = total as f64 - 1.0;
                let anneal =
                    |from: f64, to: f64, pct: f64| to + (from - to) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0);
                let t = t as f64;
                if t <= end_up && end_up > 0.0 {
                    anneal(initial, lr, t / end_up)
                } else if end_down > end_up {
                    anneal(lr, min, ((t - end_up) / (end_down - end_up)).min(1.0))
                } else {
                    min
                }
            }
        }
    }
}
