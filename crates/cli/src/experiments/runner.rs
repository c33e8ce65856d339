//! The shared runner: trains every setting of an experiment for every seed,
//! marks runs that fail (a non-finite loss, or an epoch in which every batch's
//! loss is above the untrained network's) and goes on, and keeps each epoch's
//! metrics for the tables, the plots and the CSV files.

use std::fmt::Write as _;
use std::time::Instant;

use normlab::data::Split;
use normlab::layers::StateMut;
use normlab::models::{LeNetConfig, Sequential};
use normlab::tensor::Tensor;
use normlab::train::{evaluate, EpochMetrics, Observer, TrainOptions, Trainer};
use normlab::{Error, Result};

use super::Context;

/// One configuration of an experiment: a label (used in tables, legends and
/// the CSV files) and the training options, seed and epochs aside.
#[derive(Clone, Debug)]
pub struct Setting {
    pub label: String,
    pub options: TrainOptions,
}

impl Setting {
    /// The chapter's recipe (batch 128, plain SGD with lr 0.1) on `network`.
    pub fn new(label: impl Into<String>, network: LeNetConfig) -> Self {
        let label = label.into();
        // the epochs, seed and limits are the experiment's, set when it runs
        Setting { options: TrainOptions::chapter_for(label.clone(), network), label }
    }
    pub fn lr(mut self, lr: f64) -> Self {
        self.options.sgd.lr = lr;
        self
    }
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.options.batch_size = batch_size;
        self
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Ok,
    /// The loss became NaN or infinite.
    Diverged {
        epoch: usize,
        message: String,
    },
    /// Every batch of an epoch had a loss above the starting value (see
    /// [`failure_threshold`]).
    LossAboveStart {
        epoch: usize,
        min_batch_loss: f64,
        start: f64,
    },
}

impl Status {
    pub fn is_ok(&self) -> bool {
        *self == Status::Ok
    }
    /// The word written in the CSV files.
    pub fn code(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Diverged { .. } => "diverged",
            Status::LossAboveStart { .. } => "loss-above-start",
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Status::Ok => "trained".into(),
            Status::Diverged { epoch, .. } => format!("non-finite loss in epoch {epoch}"),
            Status::LossAboveStart { epoch, min_batch_loss, start } => format!(
                "every batch of epoch {epoch} had a loss above the starting {start:.3} by more than 2 % (lowest {min_batch_loss:.3})"
            ),
        }
    }
}

/// One training run: a setting and a seed.
#[derive(Clone, Debug)]
pub struct Run {
    pub setting: usize,
    pub seed: u64,
    /// One entry per finished epoch; a run that diverged ends with a row of
    /// NaN for the epoch it diverged in.
    pub epochs: Vec<EpochMetrics>,
    /// The probe's per-epoch values, one row per entry of `epochs`.
    pub extra: Vec<Vec<f64>>,
    pub status: Status,
    /// The loss of the first training batch, before any update.
    pub start_loss: f64,
    /// Learnable scalars.
    pub params: usize,
    /// Wall time of the whole run (training, evaluation, probes).
    pub seconds: f64,
    /// Run-level values from [`Probe::finish`] (e.g. accuracy on the training
    /// set in prediction mode), by name.
    pub values: Vec<(String, f64)>,
}

impl Run {
    /// A run about to start: no epochs yet, status ok.
    pub fn new(setting: usize, seed: u64, params: usize) -> Self {
        Run {
            setting,
            seed,
            epochs: Vec::new(),
            extra: Vec::new(),
            status: Status::Ok,
            start_loss: f64::NAN,
            params,
            seconds: 0.0,
            values: Vec::new(),
        }
    }
    /// Ends the run in `epoch` as diverged: a row of NaN for that epoch and
    /// `extra_columns` NaN probe values.
    pub fn diverge(&mut self, epoch: usize, extra_columns: usize, message: String) {
        self.epochs.push(EpochMetrics {
            epoch,
            train_loss: f64::NAN,
            train_acc: f64::NAN,
            val_loss: f64::NAN,
            val_acc: f64::NAN,
            train_seconds: f64::NAN,
            eval_seconds: f64::NAN,
            lr: None,
        });
        self.extra.push(vec![f64::NAN; extra_columns]);
        self.status = Status::Diverged { epoch, message };
    }
    pub fn last(&self) -> Option<&EpochMetrics> {
        self.epochs.last()
    }
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    /// The last epoch's value of the probe column `col`.
    pub fn last_extra(&self, col: usize) -> Option<f64> {
        self.extra.last().and_then(|r| r.get(col).copied())
    }
}

/// Extra measurements taken during each run.
pub trait Probe {
    /// Names of the per-epoch values (`after_epoch` returns them in order).
    fn columns(&self) -> Vec<String> {
        Vec::new()
    }
    /// Before the first epoch of each run.
    fn start(&mut self, _trainer: &mut Trainer) -> Result<()> {
        Ok(())
    }
    /// After each epoch's training and evaluation.
    fn after_epoch(&mut self, _trainer: &mut Trainer, _ctx: &Context) -> Result<Vec<f64>> {
        Ok(Vec::new())
    }
    /// After the last epoch of a run that did not fail.
    fn finish(&mut self, _trainer: &mut Trainer, _ctx: &Context) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

pub struct NoProbe;
impl Probe for NoProbe {}

/// Accuracy and loss on the (subset of the) training set in prediction mode
/// after the last epoch: `train_acc_eval`, `train_loss_eval`. The training
/// accuracy logged during an epoch is taken in training mode (dropout on,
/// weights changing), which is not comparable with the validation accuracy.
pub struct TrainSetEval;
impl Probe for TrainSetEval {
    fn finish(&mut self, trainer: &mut Trainer, ctx: &Context) -> Result<Vec<(String, f64)>> {
        let e = evaluate(&mut trainer.net, &ctx.train, 500, None)?;
        Ok(vec![("train_acc_eval".into(), e.accuracy), ("train_loss_eval".into(), e.loss)])
    }
}

/// A run fails when every batch of an epoch has a loss above this: 2 % above
/// its starting value, the larger of the first batch's loss (the untrained
/// network's) and ln 10 (a uniform prediction over the 10 classes). The
/// floor and the margin keep a network that merely stalls near ln 10, with
/// batch-to-batch noise, from counting as diverged.
pub fn failure_threshold(start_loss: f64) -> f64 {
    1.02 * start_loss.max(std::f64::consts::LN_10)
}

/// Follows the loss batch by batch: the first batch's loss (the starting
/// value) and, per epoch, the lowest batch loss.
struct LossWatch {
    n: usize,
    batch_size: usize,
    start: Option<f64>,
    prev_sum: f64,
    prev_seen: usize,
    min_batch: f64,
}

impl Observer for LossWatch {
    fn on_batch(&mut self, epoch: usize, batch: usize, _batches: usize, loss: f64, _eps: f64) {
        if batch == 1 {
            self.prev_sum = 0.0;
            self.prev_seen = 0;
            self.min_batch = f64::INFINITY;
        }
        // `loss` is the epoch's running mean; batches are full except the last
        let seen = (batch * self.batch_size).min(self.n);
        let sum = loss * seen as f64;
        let batch_loss = (sum - self.prev_sum) / (seen - self.prev_seen).max(1) as f64;
        if epoch == 1 && batch == 1 {
            self.start = Some(batch_loss);
        } else {
            self.min_batch = self.min_batch.min(batch_loss);
        }
        self.prev_sum = sum;
        self.prev_seen = seen;
    }
}

/// Every run of an experiment.
#[derive(Clone, Debug)]
pub struct Runs {
    pub settings: Vec<String>,
    /// Names of the probe's per-epoch columns.
    pub columns: Vec<String>,
    pub runs: Vec<Run>,
}

/// Mean and sample standard deviation of the values of the runs that trained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    /// Runs with a value.
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Option<Stat> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Some(Stat { mean, std, n })
    }
    /// `0.8512 ± 0.0031` (the mean alone for a single run).
    pub fn fmt(&self, decimals: usize) -> String {
        let mean = super::report::fixed(self.mean, decimals);
        if self.n > 1 {
            format!("{mean} ± {}", super::report::fixed(self.std, decimals))
        } else {
            mean
        }
    }
    /// Standard error of the mean.
    pub fn sem(&self) -> f64 {
        self.std / (self.n as f64).sqrt()
    }
    /// Whether `self - other` is more than twice its standard error (a
    /// difference the seeds' spread does not explain).
    pub fn clearly_differs(&self, other: &Stat) -> bool {
        let se = (self.sem().powi(2) + other.sem().powi(2)).sqrt();
        (self.mean - other.mean).abs() > 2.0 * se && self.n > 1 && other.n > 1
    }
}

impl Runs {
    pub fn of_setting(&self, setting: usize) -> impl Iterator<Item = &Run> {
        self.runs.iter().filter(move |r| r.setting == setting)
    }
    pub fn index(&self, label: &str) -> usize {
        self.settings.iter().position(|s| s == label).unwrap_or_else(|| panic!("no setting named {label}"))
    }
    pub fn column(&self, name: &str) -> usize {
        self.columns.iter().position(|s| s == name).unwrap_or_else(|| panic!("no column named {name}"))
    }
    /// Runs of the setting that trained / all its runs.
    pub fn ok_count(&self, setting: usize) -> (usize, usize) {
        let all: Vec<_> = self.of_setting(setting).collect();
        (all.iter().filter(|r| r.status.is_ok()).count(), all.len())
    }
    /// `f` over the runs of `setting` that trained.
    pub fn stat(&self, setting: usize, f: impl Fn(&Run) -> Option<f64>) -> Option<Stat> {
        let v: Vec<f64> = self.of_setting(setting).filter(|r| r.status.is_ok()).filter_map(f).collect();
        Stat::of(&v)
    }
    pub fn final_val_acc(&self, setting: usize) -> Option<Stat> {
        self.stat(setting, |r| r.last().map(|m| m.val_acc))
    }
    pub fn final_train_loss(&self, setting: usize) -> Option<Stat> {
        self.stat(setting, |r| r.last().map(|m| m.train_loss))
    }
    /// Per epoch, the mean of `f` over the runs of `setting` that reached
    /// that epoch with a finite value (failed runs included up to their
    /// failure): points `(epoch, mean)`.
    pub fn epoch_curve(&self, setting: usize, f: impl Fn(&EpochMetrics, &[f64]) -> f64) -> Vec<(f64, f64)> {
        self.curve(setting, false, f)
    }
    /// As [`Runs::epoch_curve`], over the runs that trained only (a diverged
    /// run's huge loss would flatten every other line of a loss plot).
    pub fn epoch_curve_ok(&self, setting: usize, f: impl Fn(&EpochMetrics, &[f64]) -> f64) -> Vec<(f64, f64)> {
        self.curve(setting, true, f)
    }
    fn curve(&self, setting: usize, ok_only: bool, f: impl Fn(&EpochMetrics, &[f64]) -> f64) -> Vec<(f64, f64)> {
        let runs = || self.of_setting(setting).filter(move |r| !ok_only || r.status.is_ok());
        let max_epoch = runs().map(|r| r.epochs.len()).max().unwrap_or(0);
        (0..max_epoch)
            .map(|e| {
                let v: Vec<f64> = runs()
                    .filter(|r| e < r.epochs.len())
                    .map(|r| f(&r.epochs[e], r.extra.get(e).map(|x| x.as_slice()).unwrap_or(&[])))
                    .collect();
                ((e + 1) as f64, Stat::of(&v).map_or(f64::NAN, |s| s.mean))
            })
            .collect()
    }

    /// `epochs.csv`: one row per run and epoch.
    pub fn epochs_csv(&self) -> String {
        let mut s = String::from("setting,seed,epoch,train_loss,train_acc,val_loss,val_acc,train_seconds,eval_seconds");
        for c in &self.columns {
            s += &format!(",{c}");
        }
        s += ",status\n";
        for r in &self.runs {
            for (i, m) in r.epochs.iter().enumerate() {
                let _ = write!(
                    s,
                    "{},{},{},{},{},{},{},{:.4},{:.4}",
                    csv_field(&self.settings[r.setting]),
                    r.seed,
                    m.epoch,
                    num(m.train_loss),
                    num(m.train_acc),
                    num(m.val_loss),
                    num(m.val_acc),
                    m.train_seconds,
                    m.eval_seconds
                );
                for c in 0..self.columns.len() {
                    let v = r.extra.get(i).and_then(|x| x.get(c)).copied().unwrap_or(f64::NAN);
                    let _ = write!(s, ",{}", num(v));
                }
                let _ = writeln!(s, ",{}", r.status.code());
            }
        }
        s
    }

    /// `runs.csv`: one row per run with its outcome and run-level values.
    pub fn runs_csv(&self) -> String {
        let mut names: Vec<String> = Vec::new();
        for r in &self.runs {
            for (n, _) in &r.values {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        let mut s = String::from("setting,seed,status,epochs,start_loss,final_train_loss,final_val_acc,params,seconds");
        for n in &names {
            s += &format!(",{n}");
        }
        s += ",note\n";
        for r in &self.runs {
            let last = r.last();
            let _ = write!(
                s,
                "{},{},{},{},{},{},{},{},{:.2}",
                csv_field(&self.settings[r.setting]),
                r.seed,
                r.status.code(),
                r.epochs.len(),
                num(r.start_loss),
                num(last.map_or(f64::NAN, |m| m.train_loss)),
                num(last.map_or(f64::NAN, |m| m.val_acc)),
                r.params,
                r.seconds
            );
            for n in &names {
                let _ = write!(s, ",{}", num(r.value(n).unwrap_or(f64::NAN)));
            }
            let _ = writeln!(s, ",{}", csv_field(&r.status.describe()));
        }
        s
    }
}

/// A number as written in the CSV files: 6 decimals, or `nan`/`inf`.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else if v != 0.0 && v.abs() < 1e-4 {
        format!("{v:.6e}")
    } else {
        format!("{v:.6}")
    }
}

/// Quotes a CSV field when it needs it.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The state buffers (running statistics and counters) of a network, to put
/// back after a measurement that changes them.
pub fn save_buffers(trainer: &mut Trainer) -> Vec<(Option<Tensor<f32>>, Option<i64>)> {
    save_net_buffers(&mut trainer.net)
}

pub fn restore_buffers(trainer: &mut Trainer, saved: &[(Option<Tensor<f32>>, Option<i64>)]) {
    restore_net_buffers(&mut trainer.net, saved)
}

/// [`save_buffers`] of a network.
pub fn save_net_buffers(net: &mut Sequential<f32>) -> Vec<(Option<Tensor<f32>>, Option<i64>)> {
    net.state_mut()
        .into_iter()
        .filter_map(|(_, s)| match s {
            StateMut::Buffer(b) => Some((Some(b.clone()), None)),
            StateMut::Count(c) => Some((None, Some(*c))),
            StateMut::Param { .. } => None,
        })
        .collect()
}

/// [`restore_buffers`] of a network.
pub fn restore_net_buffers(net: &mut Sequential<f32>, saved: &[(Option<Tensor<f32>>, Option<i64>)]) {
    let mut it = saved.iter();
    for (_, s) in net.state_mut() {
        match s {
            StateMut::Buffer(b) => {
                if let Some((Some(t), _)) = it.next() {
                    b.copy_from(t);
                }
            }
            StateMut::Count(c) => {
                if let Some((_, Some(v))) = it.next() {
                    *c = *v;
                }
            }
            StateMut::Param { .. } => {}
        }
    }
}

/// Trains every setting for every seed of `ctx`, in order, with `probe`.
pub fn run_settings(ctx: &Context, settings: &[Setting], probe: &mut dyn Probe) -> Result<Runs> {
    let mut runs = Runs {
        settings: settings.iter().map(|s| s.label.clone()).collect(),
        columns: probe.columns(),
        runs: Vec::new(),
    };
    let total = settings.len() * ctx.seeds.len();
    for (si, setting) in settings.iter().enumerate() {
        for (k, &seed) in ctx.seeds.iter().enumerate() {
            let started = Instant::now();
            let mut options = setting.options.clone();
            options.seed = seed;
            options.epochs = ctx.epochs;
            options.limit_train = None;
            options.limit_val = None;
            let mut trainer = Trainer::new(options.clone())?;
            let params = trainer.net.num_params();
            probe.start(&mut trainer)?;
            let mut watch = LossWatch {
                n: ctx.train.len(),
                batch_size: options.batch_size,
                start: None,
                prev_sum: 0.0,
                prev_seen: 0,
                min_batch: f64::INFINITY,
            };
            let mut run = Run::new(si, seed, params);
            for epoch in 1..=ctx.epochs {
                match trainer.run_epoch(&ctx.train, &ctx.val, &mut watch) {
                    Ok(m) => {
                        run.start_loss = watch.start.unwrap_or(f64::NAN);
                        run.epochs.push(m);
                        run.extra.push(probe.after_epoch(&mut trainer, ctx)?);
                        // (an epoch-1 with a single batch has nothing to compare)
                        if watch.min_batch.is_finite() && watch.min_batch > failure_threshold(run.start_loss) {
                            run.status = Status::LossAboveStart {
                                epoch,
                                min_batch_loss: watch.min_batch,
                                start: run.start_loss,
                            };
                            break;
                        }
                    }
                    Err(Error::Diverged(message)) => {
                        run.start_loss = watch.start.unwrap_or(f64::NAN);
                        run.diverge(epoch, runs.columns.len(), message);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if run.status.is_ok() {
                run.values = probe.finish(&mut trainer, ctx)?;
            }
            run.seconds = started.elapsed().as_secs_f64();
            let done = si * ctx.seeds.len() + k + 1;
            let outcome = match (&run.status, run.last()) {
                (Status::Ok, Some(m)) => format!("val acc {:.4}, train loss {:.4}", m.val_acc, m.train_loss),
                (s, _) => format!("FAILED: {}", s.describe()),
            };
            ctx.log(&format!(
                "[{}] {done}/{total} {} seed {seed}: {outcome} ({} epochs, {:.1} s)",
                ctx.name,
                setting.label,
                run.epochs.len(),
                run.seconds
            ));
            runs.runs.push(run);
        }
    }
    Ok(runs)
}

/// The training split of a context restricted to its first `n` examples
/// (for measurements that do not need all of it).
pub fn head(split: &Split, n: usize) -> Split {
    let mut s = split.clone();
    s.truncate(n);
    s
}
