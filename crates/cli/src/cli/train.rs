//! `normlab train`: the chapter's experiment.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::download::IdxSet;
use crate::locate::DataChoice;
use crate::plot;
use crate::rundir::{Owner, RunDir};
use normlab::data::FashionMnist;
use normlab::fsutil::write_atomic;
use normlab::models::{Architecture, ModelKind, ModelSpec};
use normlab::optim::SgdConfig;
use normlab::train::{self, checkpoint, EpochMetrics, Observer, TrainOptions, Trainer, CHAPTER_EPOCHS};

use super::args::{count, PathArg};
use super::DataArgs;

mod record;
use record::{DataRecord, RunRecord};

#[derive(clap::Args, Debug)]
#[command(
    about = "Train a LeNet or your own network (a model file) on Fashion-MNIST, MNIST, KMNIST or an image folder (defaults: the chapter's recipe)",
    after_help = "Examples:\n  normlab train                                   # bn-lenet, 10 epochs, batch 128, SGD lr 0.1\n  normlab train --model lenet --epochs 5 --out runs/plain\n  normlab train --model examples/models/vgg-small.toml   # your own network, from a model file\n  normlab train --limit-train 2000 --epochs 2 --json --quiet\n  normlab train --recompute-stats                 # population BN statistics after training\n  normlab train --resume runs/plain --epochs 8    # continue (or extend) a run as it was recorded\n  normlab train --out runs/plain --force          # replace the run in runs/plain\n  normlab train --dataset kmnist                  # KMNIST, downloaded into the cache if not found\n  normlab train --dataset image-folder --data-dir photos   # photos/train/<class>/*.jpg, photos/test/<class>/...\n\nWrites metrics.csv, curves.svg/png, model.safetensors (PyTorch state_dict names), run.json and\ncheckpoint.safetensors (for --resume) under --out (default runs/<model>-<UTC time>), a directory\nthat belongs to this run alone."
)]
pub struct TrainArgs {
    /// bn-lenet | bn-lenet-scratch | lenet | ln-lenet, or a model file FILE.toml describing any
    /// network layer by layer (see README, "Your own network") [default: bn-lenet]
    #[arg(long)]
    model: Option<String>,
    /// Epochs in all (default: the chapter's 10; with --resume, a new total to extend the run).
    #[arg(long, allow_negative_numbers = true, value_parser = count(1, "10"))]
    epochs: Option<usize>,
    /// Training examples per SGD step [default: 128]
    #[arg(long, allow_negative_numbers = true, value_parser = count(1, "128"))]
    batch_size: Option<usize>,
    /// Learning rate of plain minibatch SGD [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// SGD momentum (PyTorch semantics) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// L2 penalty added to each gradient [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// Seeds the initial weights and the shuffling [default: 0]
    #[arg(long, allow_negative_numbers = true, value_parser = count(0, "0"))]
    seed: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
    /// Image folders: 1 (grey) or 3 (RGB) input channels [default: 3 if any image has colour, else 1]
    #[arg(long, value_name = "C", allow_negative_numbers = true, value_parser = clap::value_parser!(u8).range(1..=3))]
    channels: Option<u8>,
    /// Output directory, new or empty (default runs/<model>-<UTC time>, with -2, -3, ... if taken).
    #[arg(long, value_name = "DIR", value_parser = PathArg)]
    out: Option<PathBuf>,
    /// Replace the run that --out holds, whole (its files are removed once this run's first epoch is done).
    #[arg(long, requires = "out")]
    force: bool,
    /// Train on the first N training images only.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = count(1, "10000"))]
    limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = count(1, "1000"))]
    limit_val: Option<usize>,
    /// After training, recompute BN statistics over the whole training set.
    #[arg(long)]
    recompute_stats: bool,
    /// Print one JSON object per epoch and a summary on stdout, nothing else.
    #[arg(long)]
    json: bool,
    /// Nothing for people: no progress bar, no per-epoch lines (stderr), no closing line (stdout).
    #[arg(long)]
    quiet: bool,
    /// Continue the run in DIR from its last complete epoch (its
    /// checkpoint.safetensors) with its recorded options and data; options
    /// given with it must agree with the record, except --epochs, which may
    /// raise the total.
    #[arg(long, value_name = "DIR", conflicts_with = "out", value_parser = PathArg)]
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
        if batch.is_multiple_of(8) || batch == batches {
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

/// `normlab train`: start or resume a run, train its epochs, optionally
/// recompute BN statistics, then write the plots and the summary.
pub fn run(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    match &args.resume {
        Some(dir) => resume(&args, dir, started),
        None => start(&args, started),
    }
}

/// A new run from the command line's options, in a directory of its own.
fn start(args: &TrainArgs, started: Instant) -> Result<()> {
    let mut options = match args.model.as_deref().map(model_file) {
        Some(Some(file)) => {
            // without `input`, the network takes the data's shape (set below);
            // it is checked now for the usual 28x28 examples, so that a bad
            // file is named with its line before any data is read
            let mut spec = ModelSpec::from_toml_file(file, None)?;
            if spec.input.is_none() {
                let [_, h, w] = TrainOptions::chapter(ModelKind::BnLenet).input_shape;
                let channels = args.channels.map_or(1, usize::from);
                spec = ModelSpec::from_toml_file(file, Some(&[channels, h, w]))?;
            }
            let input = spec.input.clone();
            let mut options = TrainOptions::chapter_with(model_file_name(file), spec);
            if let Some(&[c, h, w]) = input.as_deref() {
                // images are resized to the model's input
                options.input_shape = [c, h, w];
            }
            options
        }
        _ => TrainOptions::chapter(ModelKind::parse(args.model.as_deref().unwrap_or(ModelKind::BnLenet.name()))?),
    };
    let name = options.model.clone();
    options.epochs = args.epochs.unwrap_or(CHAPTER_EPOCHS);
    options.batch_size = args.batch_size.unwrap_or(options.batch_size);
    let lr = args.lr.unwrap_or(options.sgd.lr);
    options.sgd = SgdConfig {
        momentum: args.momentum.unwrap_or(0.0),
        weight_decay: args.weight_decay.unwrap_or(0.0),
        ..SgdConfig::new(lr)
    };
    options.seed = args.seed.unwrap_or(0) as u64;
    options.limit_train = args.limit_train;
    options.limit_val = args.limit_val;
    options.validate()?;
    if args.recompute_stats && !options.network.has_batch_norm() {
        return Err(normlab::Error::config(
            "--recompute-stats",
            format!("model {name} has no batch-norm layers, so there are no statistics to recompute; leave --recompute-stats out"),
        )
        .into());
    }
    let choice = args.data.choice(DataChoice::Idx(IdxSet::FashionMnist))?;
    if args.channels.is_some() && choice != DataChoice::ImageFolder {
        return Err(normlab::Error::config(
            "--channels",
            format!("{} has 1 channel (grey) and no choice; --channels is for --dataset image-folder", choice.title()),
        )
        .into());
    }
    let dir = match &args.out {
        Some(out) => RunDir::claim(out, args.force, Owner::Train)?,
        None => RunDir::claim_new(Path::new("runs"), &format!("{name}-{}", super::utc_timestamp()))?,
    };
    let show_progress = !args.quiet && super::stderr_is_terminal();
    let [_, rows, cols] = options.input_shape;
    let (choice, fm) = args.data.load(choice, show_progress, args.channels.map(usize::from), rows, cols)?;
    if args.recompute_stats {
        super::recompute::check_enough_images(&fm)?;
    }
    // the network's input and output from the data
    options.input_shape = fm.train.example_shape();
    options.classes = fm.num_classes();
    if let Architecture::Spec(spec) = &options.network {
        if spec.input.is_none() {
            options.network = Architecture::Spec(spec.clone().with_input(&options.input_shape));
        }
    }
    let trainer = Trainer::new(options)?;
    let record = RunRecord { data: DataRecord::of(&fm, choice), recompute_stats: args.recompute_stats };
    execute(args, dir, name, trainer, fm, choice, record, started)
}

/// `--model`'s value as a model file: a name ending in `.toml`, or an
/// existing file (the built-in names are neither).
pub(super) fn model_file(value: &str) -> Option<&Path> {
    let path = Path::new(value);
    (value.ends_with(".toml") || (ModelKind::parse(value).is_err() && path.is_file())).then_some(path)
}

/// A model file's run name: its file name without `.toml` (with it when
/// that is a built-in model's name, which promises the built-in network).
fn model_file_name(file: &Path) -> String {
    let stem = file.file_stem().map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned());
    if ModelKind::parse(&stem).is_ok() {
        format!("{stem}.toml")
    } else {
        stem
    }
}

/// Continues the run in `dir` from its training checkpoint, as it was
/// recorded; `--epochs`, when given, is the new total.
fn resume(args: &TrainArgs, dir: &Path, started: Instant) -> Result<()> {
    let claimed = RunDir::resume(dir)?;
    let state = dir.join(STATE_FILE);
    if !state.is_file() {
        return Err(normlab::Error::io(
            dir,
            std::io::Error::other(format!(
                "holds no {STATE_FILE}: this is not a run's directory, or its run ended before its first epoch; \
                 start a new run with --out"
            )),
        )
        .into());
    }
    let (mut trainer, metadata) = Trainer::resume_with_metadata(&state)?;
    let recorded = RunRecord::read(&state, &metadata)?;
    record::check_options(args, dir, &trainer.options, recorded.as_ref())?;
    let done = trainer.epoch();
    if let Some(e) = args.epochs {
        if e < done {
            return Err(normlab::Error::config(
                "--epochs",
                format!(
                    "{e} is below the {done} epochs {} has done; give --epochs {done} or more to extend it, or leave --epochs out",
                    dir.display()
                ),
            )
            .into());
        }
        trainer.options.epochs = e;
        trainer.options.validate()?;
    }
    let quiet = args.quiet;
    let say = |line: String| {
        if !quiet {
            super::say(format_args!("{line}"));
        }
    };
    if done >= trainer.options.epochs && record::finished(dir, done) {
        // nothing to do, and nothing touched: the run's files stay as they are
        say(format!(
            "{} is finished ({done} of {done} epochs); nothing to do (raise --epochs to train it further)",
            dir.display()
        ));
        return Ok(());
    }
    let name = trainer.options.model.clone();
    // unknown in checkpoints older than the record: the command line says
    let recompute = recorded.as_ref().map_or_else(|| record::legacy_recompute(args, dir), |r| r.recompute_stats);
    if recompute {
        super::recompute::check_has_batch_norm(&mut trainer.net, &name, "leave --recompute-stats out")?;
    }
    let show_progress = !args.quiet && super::stderr_is_terminal();
    let fm = record::resume_data(args, dir, recorded.as_ref(), &trainer.options, show_progress, say)?;
    if recompute {
        super::recompute::check_enough_images(&fm)?;
    }
    let choice = recorded
        .as_ref()
        .and_then(|r| DataChoice::parse(&r.data.dataset).ok())
        .unwrap_or(DataChoice::Idx(IdxSet::FashionMnist));
    let record = RunRecord { data: DataRecord::of(&fm, choice), recompute_stats: recompute };
    execute(args, claimed, name, trainer, fm, choice, record, started)
}

/// Trains the remaining epochs, recomputes the statistics if the run
/// asks for it, and writes the plots and the summary.
#[allow(clippy::too_many_arguments)]
fn execute(
    args: &TrainArgs,
    mut dir: RunDir,
    name: String,
    mut trainer: Trainer,
    fm: FashionMnist,
    choice: DataChoice,
    record: RunRecord,
    started: Instant,
) -> Result<()> {
    let show_progress = !args.quiet && super::stderr_is_terminal();
    let run = Run::new(args, dir.path().to_path_buf(), name, &trainer, fm, choice, record);
    run.say_start(&trainer);
    if trainer.epoch() > 0 {
        // a resumed run: its files as of its checkpoint, whatever a kill
        // left of them (the same bytes where they were complete)
        write_epoch_files(&run, &mut dir, &mut trainer)?;
    }
    train_epochs(&run, &mut dir, &mut trainer, show_progress)?;
    let recompute =
        if run.record.recompute_stats { recompute_stats(&run, &mut trainer)? } else { serde_json::Value::Null };
    finish(&run, &trainer, recompute, started)
}

/// What a run writes to and reads from, fixed once it starts.
struct Run {
    out: PathBuf,
    /// The model's name (a built-in's, or a model file's).
    name: String,
    fm: FashionMnist,
    choice: DataChoice,
    /// The metadata entries that tell eval and predict the data's shape and classes.
    data_meta: Vec<(&'static str, String)>,
    record: RunRecord,
    n_train: usize,
    n_val: usize,
    json: bool,
    quiet: bool,
}

impl Run {
    fn new(
        args: &TrainArgs,
        out: PathBuf,
        name: String,
        trainer: &Trainer,
        fm: FashionMnist,
        choice: DataChoice,
        record: RunRecord,
    ) -> Self {
        let options = &trainer.options;
        let n_train = options.limit_train.map_or(fm.train.len(), |l| l.min(fm.train.len()));
        let n_val = options.limit_val.map_or(fm.test.len(), |l| l.min(fm.test.len()));
        let data_meta = checkpoint::data_metadata(choice.name(), &fm.class_names, options.input_shape);
        Run { out, name, fm, choice, data_meta, record, n_train, n_val, json: args.json, quiet: args.quiet }
    }

    /// A progress line for people, on stderr (stdout carries only results),
    /// none with --quiet.
    fn say(&self, line: String) {
        if !self.quiet {
            super::say(format_args!("{line}"));
        }
    }

    fn say_start(&self, trainer: &Trainer) {
        if trainer.epoch() > 0 {
            self.say(format!(
                "resuming {} after epoch {} of {}",
                self.out.display(),
                trainer.epoch(),
                trainer.options.epochs
            ));
        }
        self.say(format!(
            "training {} on {} {} images of {} classes, validating on {} ({} threads, {}), output in {}",
            self.name,
            self.n_train,
            self.choice.name(),
            self.fm.num_classes(),
            self.n_val,
            rayon::current_num_threads(),
            normlab::isa::active(),
            self.out.display()
        ));
    }

    fn model_path(&self) -> PathBuf {
        self.out.join("model.safetensors")
    }

    /// run.json: the options, the data, the epochs so far and `result`.
    fn write_run_json(&self, trainer: &Trainer, result: serde_json::Value) -> Result<()> {
        let doc = json!({
            "normlab_version": env!("CARGO_PKG_VERSION"),
            "options": trainer.options,
            "threads": rayon::current_num_threads(),
            "isa": normlab::isa::active().name(),
            // lossy: a cache under a non-UTF-8 $HOME must not stop the run
            "data_dir": self.fm.dir.to_string_lossy(),
            "data_sha256": self.record.data.sha256,
            "dataset": self.choice.name(),
            "class_names": self.fm.class_names,
            "recompute_stats": self.record.recompute_stats,
            "train_examples": self.n_train,
            "val_examples": self.n_val,
            "epochs": trainer.history,
            "result": result,
        });
        Ok(write_atomic(&self.out.join("run.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?)
    }
}

/// The remaining epochs; after each, every file of the run is brought up to
/// date (metrics, model, training checkpoint, run.json). The directory is
/// the run's for good once the first epoch's files are all written.
fn train_epochs(run: &Run, dir: &mut RunDir, trainer: &mut Trainer, show_progress: bool) -> Result<()> {
    let bar = ProgressBar::with_draw_target(
        None,
        if show_progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg}")?.progress_chars("=> "));
    let mut progress = Progress { bar };
    let epochs = trainer.options.epochs;
    for _ in trainer.epoch()..epochs {
        let m = trainer.run_epoch(&run.fm.train, &run.fm.test, &mut progress)?;
        progress.bar.finish_and_clear();
        run.say(format!(
            "epoch {:>2}/{}  train loss {:.4}  train acc {:.4}  val loss {:.4}  val acc {:.4}  ({:.2} s train, {:.2} s eval)",
            m.epoch, epochs, m.train_loss, m.train_acc, m.val_loss, m.val_acc, m.train_seconds, m.eval_seconds
        ));
        write_epoch_files(run, dir, trainer)?;
        // the files first: they are the run's output, the line only reports them
        if run.json {
            super::print_line(&serde_json::to_string(&m)?)?;
        }
    }
    Ok(())
}

/// Brings every file of the run up to date with `trainer`'s completed
/// epochs: the training checkpoint first (a run killed after it is
/// resumable, and its resume rewrites the rest), then metrics.csv,
/// model.safetensors and run.json. Once they are all written the directory
/// is the run's for good.
fn write_epoch_files(run: &Run, dir: &mut RunDir, trainer: &mut Trainer) -> Result<()> {
    dir.begin_writing()?;
    let mut state_meta = vec![(record::META_RECORD, run.record.to_json())];
    state_meta.extend(run.data_meta.iter().cloned());
    trainer.save_state_with(&run.out.join(STATE_FILE), &state_meta)?;
    write_metrics(&run.out.join("metrics.csv"), &trainer.history)?;
    let (network, epoch) = (trainer.options.network.clone(), trainer.epoch().to_string());
    let mut meta = vec![("epoch", epoch)];
    meta.extend(run.data_meta.iter().cloned());
    checkpoint::save(&mut trainer.net, &run.name, &network, &meta, &run.model_path())?;
    run.write_run_json(trainer, json!("in progress"))?;
    dir.keep();
    Ok(())
}

/// Population BN statistics over the whole training set, saved into the
/// model; returns what run.json records of it.
fn recompute_stats(run: &Run, trainer: &mut Trainer) -> Result<serde_json::Value> {
    let batch = trainer.options.eval_batch_size;
    let before = trainer.history.last().map(|m| m.val_acc).unwrap_or(f64::NAN);
    let t = Instant::now();
    let layers = train::recompute_bn_stats(&mut trainer.net, &run.fm.train, batch)?;
    let after = train::evaluate(&mut trainer.net, &run.fm.test, batch, trainer.options.limit_val)?;
    run.say(format!(
        "recomputed the statistics of {layers} BN layers over {} training images in {:.2} s: val acc {before:.4} -> {:.4} (val loss {:.4})",
        run.fm.train.len(),
        t.elapsed().as_secs_f64(),
        after.accuracy,
        after.loss
    ));
    let epoch = trainer.epoch().to_string();
    let network = trainer.options.network.clone();
    let mut meta = vec![("epoch", epoch), ("bn_stats", "recomputed over the training set".into())];
    meta.extend(run.data_meta.iter().cloned());
    checkpoint::save(&mut trainer.net, &run.name, &network, &meta, &run.model_path())?;
    Ok(
        json!({"bn_layers": layers, "val_acc_before": before, "val_acc_after": after.accuracy, "val_loss_after": after.loss}),
    )
}

/// The plots, the final run.json and the summary line (or JSON object).
fn finish(run: &Run, trainer: &Trainer, recompute: serde_json::Value, started: Instant) -> Result<()> {
    plot::plot_curves(
        &trainer.history,
        &match run.choice {
            DataChoice::Idx(set) => format!("{} on {}", run.name, set.title()),
            DataChoice::ImageFolder => format!("{} on {}", run.name, run.fm.dir.display()),
        },
        &run.out.join("curves.svg"),
        &run.out.join("curves.png"),
    )?;
    let last = trainer.history.last().ok_or_else(|| anyhow::anyhow!("the run has no completed epoch"))?;
    let per_epoch = median(trainer.history.iter().map(|m| m.train_seconds).collect());
    let summary = json!({
        "summary": true,
        "epochs": trainer.epoch(),
        "train_loss": last.train_loss,
        "train_acc": last.train_acc,
        "val_loss": last.val_loss,
        "val_acc": last.val_acc,
        "train_seconds_per_epoch": per_epoch,
        "train_examples_per_sec": run.n_train as f64 / per_epoch,
        "total_seconds": started.elapsed().as_secs_f64(),
        "threads": rayon::current_num_threads(),
        "isa": normlab::isa::active().name(),
        "out": run.out,
        "recompute_stats": recompute,
    });
    run.write_run_json(trainer, summary.clone())?;
    // the result on stdout: the JSON summary, or a line for people unless --quiet
    if run.json {
        super::print_line(&summary.to_string())?;
    } else if !run.quiet {
        super::print_line(&format!(
            "done in {:.1} s ({per_epoch:.2} s per training epoch, {:.0} examples/s): val acc {:.4}; wrote {}",
            started.elapsed().as_secs_f64(),
            run.n_train as f64 / per_epoch,
            last.val_acc,
            run.out.display()
        ))?;
    }
    Ok(())
}
