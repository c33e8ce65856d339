//! `normlab train`: the chapter's experiment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use normlab::fsutil::{ensure_writable_dir, write_atomic};
use normlab::models::ModelKind;
use normlab::optim::SgdConfig;
use crate::plot;
use normlab::train::{self, checkpoint, EpochMetrics, Observer, TrainOptions, Trainer};

use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Train a LeNet on Fashion-MNIST (defaults: the chapter's recipe)",
    after_help = "Examples:\n  normlab train                                   # bn-lenet, 10 epochs, batch 128, SGD lr 0.1\n  normlab train --model lenet --epochs 5 --out runs/plain\n  normlab train --limit-train 2000 --epochs 2 --json --quiet\n  normlab train --recompute-stats                 # population BN statistics after training\n\nWrites metrics.csv, curves.svg/png, model.safetensors (PyTorch state_dict names) and run.json\nunder --out (default runs/<model>-<UTC time>)."
)]
pub struct TrainArgs {
    /// bn-lenet | bn-lenet-scratch | lenet | ln-lenet
    #[arg(long, default_value = "bn-lenet")]
    model: String,
    /// Epochs in all (default 10; with --resume, a new total to extend the run).
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate of plain minibatch SGD.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    lr: f64,
    /// SGD momentum (PyTorch semantics).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    weight_decay: f64,
    /// Seeds the initial weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    data: DataArgs,
    /// Output directory (default runs/<model>-<UTC time>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long, value_name = "N")]
    limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N")]
    limit_val: Option<usize>,
    /// After training, recompute BN statistics over the whole training set.
    #[arg(long)]
    recompute_stats: bool,
    /// Print one JSON object per epoch and a summary on stdout, nothing else.
    #[arg(long)]
    json: bool,
    /// No progress bar and no per-epoch lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Continue the run in DIR from its last complete epoch (its
    /// checkpoint.safetensors); the run's own options are used.
    #[arg(long, value_name = "DIR", conflicts_with = "out")]
    resume: Option<PathBuf>,
}

/// The training state beside model.safetensors, for --resume.
const STATE_FILE: &str = "checkpoint.safetensors";

struct Progress {
    bar: ProgressBar,
}

impl Observer for Progress {
    fn on_batch(&mut self, epoch: usize, batch: usize, batches: usize, loss: f64, eps: f64) {
        if batch == 1 {
            self.bar.reset();
            self.bar.set_length(batches as u64);
            self.bar.set_prefix(format!("epoch {epoch}"));
        }
        self.bar.set_position(batch as u64);
        if batch % 8 == 0 || batch == batches {
            self.bar.set_message(format!("loss {loss:.4}  {eps:.0} ex/s"));
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn write_metrics(path: &Path, history: &[EpochMetrics]) -> normlab::Result<()> {
    let mut csv = String::from(EpochMetrics::CSV_HEADER);
    csv.push('\n');
    for m in history {
        csv += &m.csv_row();
        csv.push('\n');
    }
    write_atomic(path, csv.as_bytes())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    let (out, mut trainer) = match &args.resume {
        Some(dir) => {
            let mut trainer = Trainer::resume(&dir.join(STATE_FILE))?;
            if let Some(e) = args.epochs {
                trainer.options.epochs = e;
                trainer.options.validate()?;
            }
            (dir.clone(), trainer)
        }
        None => {
            let kind = ModelKind::parse(&args.model)?;
            let mut options = TrainOptions::chapter(kind);
            options.epochs = args.epochs.unwrap_or(10);
            options.batch_size = args.batch_size;
            options.sgd =
                SgdConfig { momentum: args.momentum, weight_decay: args.weight_decay, ..SgdConfig::new(args.lr) };
            options.seed = args.seed;
            options.limit_train = args.limit_train;
            options.limit_val = args.limit_val;
            options.validate()?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-{}", kind.name(), super::utc_timestamp())));
            (out, Trainer::new(options)?)
        }
    };
    let options = trainer.options.clone();
    let kind = ModelKind::parse(&options.model)?;
    ensure_writable_dir(&out)?;

    let show_progress = !args.quiet && super::stderr_is_terminal();
    let fm = crate::locate::load(&args.data.source(show_progress))?;
    let say = |line: String| {
        if args.json {
            if !args.quiet {
                eprintln!("{line}");
            }
        } else {
            println!("{line}");
        }
    };
    let n_train = options.limit_train.map_or(fm.train.len(), |l| l.min(fm.train.len()));
    let n_val = options.limit_val.map_or(fm.test.len(), |l| l.min(fm.test.len()));
    if trainer.epoch() > 0 {
        say(format!("resuming {} after epoch {} of {}", out.display(), trainer.epoch(), options.epochs));
    }
    say(format!(
        "training {} on {n_train} images, validating on {n_val} ({} threads), output in {}",
        kind.name(),
        rayon::current_num_threads(),
        out.display()
    ));

    let bar = ProgressBar::with_draw_target(
        None,
        if show_progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = Progress { bar };
    let model_path = out.join("model.safetensors");
    let run_json = |trainer: &Trainer, extra: serde_json::Value| {
        json!({
            "normlab_version": env!("CARGO_PKG_VERSION"),
            "options": trainer.options,
            "threads": rayon::current_num_threads(),
            "data_dir": fm.dir,
            "train_examples": n_train,
            "val_examples": n_val,
            "epochs": trainer.history,
            "result": extra,
        })
    };

    for _ in trainer.epoch()..options.epochs {
        let m = trainer.run_epoch(&fm.train, &fm.test, &mut progress)?;
        progress.bar.finish_and_clear();
        say(format!(
            "epoch {:>2}/{}  train loss {:.4}  train acc {:.4}  val loss {:.4}  val acc {:.4}  ({:.2} s train, {:.2} s eval)",
            m.epoch, options.epochs, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.train_seconds, m.eval_seconds
        ));
        if args.json {
            println!("{}", serde_json::to_string(&m)?);
        }
        write_metrics(&out.join("metrics.csv"), &trainer.history)?;
        checkpoint::save(
            &mut trainer.net,
            kind.name(),
            &options.network,
            &[("epoch", m.epoch.to_string())],
            &model_path,
        )?;
        trainer.save_state(&out.join(STATE_FILE))?;
        write_atomic(
            &out.join("run.json"),
            serde_json::to_string_pretty(&run_json(&trainer, json!("in progress")))?.as_bytes(),
        )?;
    }

    let mut recompute = serde_json::Value::Null;
    if args.recompute_stats {
        let before = trainer.history.last().map(|m| m.val_acc).unwrap_or(f64::NAN);
        let t = Instant::now();
        let layers = train::recompute_bn_stats(&mut trainer.net, &fm.train, options.eval_batch_size)?;
        let after = train::evaluate(&mut trainer.net, &fm.test, options.eval_batch_size, options.limit_val)?;
        say(format!(
            "recomputed the statistics of {layers} BN layers over {} training images in {:.2} s: val acc {before:.4} -> {:.4} (val loss {:.4})",
            fm.train.len(),
            t.elapsed().as_secs_f64(),
            after.accuracy,
            after.loss
        ));
        recompute = json!({"bn_layers": layers, "val_acc_before": before, "val_acc_after": after.accuracy, "val_loss_after": after.loss});
        let epoch = trainer.epoch().to_string();
        checkpoint::save(
            &mut trainer.net,
            kind.name(),
            &options.network,
            &[("epoch", epoch), ("bn_stats", "recomputed over the training set".into())],
            &model_path,
        )?;
    }

    plot::plot_curves(
        &trainer.history,
        &format!("{} on Fashion-MNIST", kind.name()),
        &out.join("curves.svg"),
        &out.join("curves.png"),
    )?;

    let last = trainer.history.last().expect("at least one epoch").clone();
    let per_epoch = median(trainer.history.iter().map(|m| m.train_seconds).collect());
    let summary = json!({
        "summary": true,
        "epochs": trainer.epoch(),
        "train_loss": last.train_loss,
        "train_acc": last.train_acc,
        "val_loss": last.val_loss,
        "val_acc": last.val_acc,
        "train_seconds_per_epoch": per_epoch,
        "train_examples_per_sec": n_train as f64 / per_epoch,
        "total_seconds": started.elapsed().as_secs_f64(),
        "out": out,
        "recompute_stats": recompute,
    });
    write_atomic(
        &out.join("run.json"),
        serde_json::to_string_pretty(&run_json(&trainer, summary.clone()))?.as_bytes(),
    )?;
    if args.json {
        println!("{summary}");
    } else {
        say(format!(
            "done in {:.1} s ({per_epoch:.2} s per training epoch, {:.0} examples/s): val acc {:.4}; wrote {}",
            started.elapsed().as_secs_f64(),
            n_train as f64 / per_epoch,
            last.val_acc,
            out.display()
        ));
    }
    Ok(())
}
