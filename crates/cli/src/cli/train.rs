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
use normlab::models::{Architecture, ModelKind, ModelSpec, TrainDefaults};
use normlab::optim::{OptimizerKind, SgdConfig, ADAMW_BETA1, ADAMW_BETA2, ADAMW_EPS, ADAMW_WEIGHT_DECAY};
use normlab::train::{
    self, checkpoint, Augment, EpochMetrics, Observer, Schedule, ScheduleKind, TrainOptions, Trainer, CHAPTER_EPOCHS,
};

use super::args::{count, PathArg};
use super::DataArgs;

mod record;
use record::{DataRecord, RunRecord};

#[derive(clap::Args, Debug)]
#[command(
    about = "Train a LeNet or your own network (a model file) on Fashion-MNIST, MNIST, KMNIST or an image folder (defaults: the chapter's recipe)",
    after_help = "Examples:\n  normlab train                                   # bn-lenet, 10 epochs, batch 128, SGD lr 0.1\n  normlab train --model lenet --epochs 5 --out runs/plain\n  normlab train --model examples/models/vgg-small.toml   # your own network, from a model file\n  normlab train --limit-train 2000 --epochs 2 --json --quiet\n  normlab train --recompute-stats                 # population BN statistics after training\n  normlab train --resume runs/plain --epochs 8    # continue (or extend) a run as it was recorded\n  normlab train --out runs/plain --force          # replace the run in runs/plain\n  normlab train --dataset kmnist                  # KMNIST, downloaded into the cache if not found\n  normlab train --dataset image-folder --data-dir photos   # photos/train/<class>/*.jpg, photos/test/<class>/...\n  normlab train --optimizer adamw --lr 3e-3 --schedule one-cycle --epochs 8\n  normlab train --schedule cosine --warmup-epochs 1 --momentum 0.9 --weight-decay 5e-4\n  normlab train --schedule step --step-size 3 --gamma 0.1\n  normlab train --label-smoothing 0.1 --augment crop --crop-padding 2   # no flips: wrong for digits\n  normlab train --bn-momentum 0.01 --bn-eps 1e-3  # PyTorch's convention (Keras' momentum 0.99 is 0.01)\n\nWrites metrics.csv (with the lr of each epoch's first step), curves.svg/png, model.safetensors\n(PyTorch state_dict names), best.safetensors (the epoch of best val acc, named in run.json), run.json\nand checkpoint.safetensors (for --resume) under --out (default runs/<model>-<UTC time>), a directory\nthat belongs to this run alone. A model file's [train] table gives defaults for these options."
)]
pub struct TrainArgs {
    /// bn-lenet | bn-lenet-scratch | lenet | ln-lenet, or a model file FILE.toml describing any
    /// network layer by layer (see README, "Your own network") [default: bn-lenet]
    #[arg(long, conflicts_with = "preset")]
    model: Option<String>,
    /// A recipe built into normlab: fast (a small conv-BN-ReLU network, SGD with Nesterov momentum,
    /// a one-cycle schedule, label smoothing and flips, batch 256: about 93% on Fashion-MNIST in 7 epochs, 54-56 s
    /// on 2 cores; see README, "The fast preset"). Options given beside it replace its values.
    #[arg(long, value_name = "NAME", value_parser = PRESETS.map(|p| p.0))]
    preset: Option<String>,
    /// Epochs in all (default: the chapter's 10; with --resume, a new total to extend the run).
    #[arg(long, allow_negative_numbers = true, value_parser = count(1, "10"))]
    epochs: Option<usize>,
    /// Training examples per SGD step [default: 128]
    #[arg(long, allow_negative_numbers = true, value_parser = count(1, "128"))]
    batch_size: Option<usize>,
    /// Base learning rate [default: 0.1 with SGD, 1e-3 with AdamW (PyTorch's)]
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// sgd (torch.optim.SGD) or adamw (torch.optim.AdamW: decoupled weight decay, bias correction) [default: sgd]
    #[arg(long, value_name = "NAME", value_parser = ["sgd", "adamw"])]
    optimizer: Option<String>,
    /// SGD momentum (PyTorch semantics) [default: 0]
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// SGD: L2 penalty added to each gradient; AdamW: decoupled decay, p *= 1 - lr x wd [default: 0 with SGD, 0.01 with AdamW]
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// SGD with Nesterov momentum (torch.optim.SGD's nesterov=True; needs --momentum > 0)
    #[arg(long)]
    nesterov: bool,
    /// AdamW's betas[0], in [0, 1) [default: 0.9]
    #[arg(long, allow_negative_numbers = true)]
    beta1: Option<f64>,
    /// AdamW's betas[1], in [0, 1) [default: 0.999]
    #[arg(long, allow_negative_numbers = true)]
    beta2: Option<f64>,
    /// AdamW's eps, added to the denominator [default: 1e-8]
    #[arg(long, value_name = "EPS", allow_negative_numbers = true)]
    adam_eps: Option<f64>,
    /// Learning-rate schedule, evaluated before every step (batch): constant; step (StepLR: times
    /// --gamma every --step-size epochs); cosine (CosineAnnealingLR to 0 over the run); one-cycle
    /// (OneCycleLR with max_lr = --lr, no momentum cycling) [default: constant]
    #[arg(long, value_name = "NAME", value_parser = ScheduleKind::NAMES)]
    schedule: Option<String>,
    /// Epochs of linear warm-up from 0 to --lr (fractions allowed); for one-cycle, its rising phase [default: 0; one-cycle: 30% of the run]
    #[arg(long, value_name = "EPOCHS", allow_negative_numbers = true)]
    warmup_epochs: Option<f64>,
    /// --schedule step: epochs between multiplications by --gamma
    #[arg(long, value_name = "EPOCHS", allow_negative_numbers = true, value_parser = count(1, "3"))]
    step_size: Option<usize>,
    /// --schedule step: the factor [default: 0.1]
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f64>,
    /// Label smoothing of the training loss, in [0, 1) (PyTorch's CrossEntropyLoss(label_smoothing=EPS);
    /// the validation loss stays plain cross-entropy) [default: 0]
    #[arg(long, value_name = "EPS", allow_negative_numbers = true)]
    label_smoothing: Option<f64>,
    /// Augment each training batch: crop (random crop with --crop-padding zeros), flip (random
    /// horizontal flip: wrong for digits), crop,flip or none; seeded by --seed [default: none]
    #[arg(long, value_name = "LIST")]
    augment: Option<String>,
    /// Zero padding of the random crop, in pixels (implies --augment crop) [default: 2 with crop]
    #[arg(long, value_name = "P", allow_negative_numbers = true, value_parser = count(0, "2"))]
    crop_padding: Option<usize>,
    /// Momentum of every batch norm in PyTorch's convention: the weight of the NEW batch statistic,
    /// running = (1 - m) running + m batch, in [0, 1] (Keras' 0.99 is 0.01) [default: 0.1, or the model file's]
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    bn_momentum: Option<f64>,
    /// eps of every batch norm, added to the variance (PyTorch's convention) [default: 1e-5, or the model file's]
    #[arg(long, value_name = "EPS", allow_negative_numbers = true)]
    bn_eps: Option<f64>,
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
/// The model of the epoch with the best validation accuracy.
const BEST_FILE: &str = "best.safetensors";

/// The epoch (from 1) of the best validation accuracy, the earliest of
/// equals, and that accuracy.
fn best_epoch(history: &[EpochMetrics]) -> Option<(usize, f64)> {
    history.iter().fold(None, |best, m| match best {
        Some((_, acc)) if acc >= m.val_acc => best,
        _ => Some((m.epoch, m.val_acc)),
    })
}

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
    let mut file_defaults: Option<(PathBuf, TrainDefaults)> = None;
    let mut options = match ModelSource::of(args) {
        ModelSource::Builtin(name) => TrainOptions::chapter(ModelKind::parse(name)?),
        source => {
            // without `input`, the network takes the data's shape (set below);
            // it is checked now for the usual 28x28 examples, so that a bad
            // file is named with its line before any data is read
            let [_, h, w] = TrainOptions::chapter(ModelKind::BnLenet).input_shape;
            let channels = args.channels.map_or(1, usize::from);
            let (spec, defaults) = source.read(&[channels, h, w])?;
            file_defaults = defaults.map(|d| (source.origin(), d));
            let input = spec.input.clone();
            let mut options = TrainOptions::chapter_with(source.run_name(), spec);
            if let Some(&[c, h, w]) = input.as_deref() {
                // images are resized to the model's input
                options.input_shape = [c, h, w];
            }
            options
        }
    };
    let name = options.model.clone();
    let none = TrainDefaults::default();
    let defaults = file_defaults.as_ref().map_or(&none, |(_, d)| d);
    if let Some((file, _)) = &file_defaults {
        // the file's values alone first, so that a bad one is named with its line
        let mut alone = options.clone();
        settle(&mut alone, defaults).and_then(|()| alone.validate()).map_err(|e| in_train_table(file, defaults, e))?;
    }
    settle(&mut options, &given(args, defaults))?;
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
        let mut spec = spec.clone();
        if spec.input.is_none() {
            spec = spec.with_input(&options.input_shape);
        }
        if args.preset.is_some() {
            // a preset's network fits the data's classes
            spec = spec.with_classes(options.classes);
        }
        options.network = Architecture::Spec(spec);
    }
    let trainer = Trainer::new(options)?;
    let record = RunRecord { data: DataRecord::of(&fm, choice), recompute_stats: args.recompute_stats };
    execute(args, dir, name, trainer, fm, choice, record, started)
}

/// The training settings the command line gives, each falling back on the
/// model file's `[train]` table.
fn given(args: &TrainArgs, file: &TrainDefaults) -> TrainDefaults {
    TrainDefaults {
        epochs: args.epochs.or(file.epochs),
        batch_size: args.batch_size.or(file.batch_size),
        lr: args.lr.or(file.lr),
        momentum: args.momentum.or(file.momentum),
        weight_decay: args.weight_decay.or(file.weight_decay),
        nesterov: args.nesterov.then_some(true).or(file.nesterov),
        optimizer: args.optimizer.clone().or_else(|| file.optimizer.clone()),
        beta1: args.beta1.or(file.beta1),
        beta2: args.beta2.or(file.beta2),
        adam_eps: args.adam_eps.or(file.adam_eps),
        schedule: args.schedule.clone().or_else(|| file.schedule.clone()),
        warmup_epochs: args.warmup_epochs.or(file.warmup_epochs),
        step_size: args.step_size.or(file.step_size),
        gamma: args.gamma.or(file.gamma),
        label_smoothing: args.label_smoothing.or(file.label_smoothing),
        augment: args.augment.clone().or_else(|| file.augment.clone()),
        crop_padding: args.crop_padding.or(file.crop_padding),
        bn_momentum: args.bn_momentum.or(file.bn_momentum),
        bn_eps: args.bn_eps.or(file.bn_eps),
        seed: args.seed.map(|s| s as u64).or(file.seed),
        lines: Default::default(),
    }
}

/// `--augment`'s list as (crop, flip).
pub(super) fn parse_augment(list: &str) -> normlab::Result<(bool, bool)> {
    let (mut crop, mut flip) = (false, false);
    for item in list.split(',').map(str::trim) {
        match item {
            "crop" => crop = true,
            "flip" | "hflip" => flip = true,
            "none" if list.trim() == "none" => {}
            _ => {
                return Err(normlab::Error::config(
                    "--augment",
                    format!("'{item}' in '{list}' is not an augmentation; give crop, flip, crop,flip or none"),
                ))
            }
        }
    }
    Ok((crop, flip))
}

/// Sets `options` (built for its network) from the settings `g`, with
/// PyTorch's defaults where `g` says nothing: the chapter's SGD, AdamW's
/// lr 1e-3 and weight decay 0.01.
fn settle(options: &mut TrainOptions, g: &TrainDefaults) -> normlab::Result<()> {
    use normlab::Error;
    options.epochs = g.epochs.unwrap_or(CHAPTER_EPOCHS);
    options.batch_size = g.batch_size.unwrap_or(TrainOptions::chapter(ModelKind::BnLenet).batch_size);
    let adamw = match g.optimizer.as_deref() {
        None | Some("sgd") => false,
        Some("adamw") => true,
        Some(other) => {
            return Err(Error::config("--optimizer", format!("'{other}' is not an optimizer; give sgd or adamw")))
        }
    };
    if adamw && g.nesterov == Some(true) {
        return Err(Error::config("--nesterov", "is SGD's: leave it out with --optimizer adamw"));
    }
    if !adamw {
        if let Some(name) = [("--beta1", g.beta1), ("--beta2", g.beta2), ("--adam-eps", g.adam_eps)]
            .iter()
            .find_map(|(n, v)| v.map(|_| *n))
        {
            return Err(Error::config(name, "is AdamW's: add --optimizer adamw, or leave it out"));
        }
    }
    let (lr, weight_decay) = if adamw { (1e-3, ADAMW_WEIGHT_DECAY) } else { (0.1, 0.0) };
    options.sgd = SgdConfig {
        momentum: g.momentum.unwrap_or(0.0),
        weight_decay: g.weight_decay.unwrap_or(weight_decay),
        nesterov: g.nesterov.unwrap_or(false),
        ..SgdConfig::new(g.lr.unwrap_or(lr))
    };
    options.optimizer = if adamw {
        OptimizerKind::AdamW {
            beta1: g.beta1.unwrap_or(ADAMW_BETA1),
            beta2: g.beta2.unwrap_or(ADAMW_BETA2),
            eps: g.adam_eps.unwrap_or(ADAMW_EPS),
        }
    } else {
        OptimizerKind::Sgd
    };
    let kind = match g.schedule.as_deref() {
        None => ScheduleKind::Constant,
        Some(name) => name.parse().map_err(|e: String| Error::config("--schedule", e))?,
    };
    options.schedule =
        Schedule { kind, warmup_epochs: g.warmup_epochs, step_size: g.step_size, gamma: g.gamma.unwrap_or(0.1) };
    options.label_smoothing = g.label_smoothing.unwrap_or(0.0);
    options.augment = augment_of(g.augment.as_deref(), g.crop_padding)?;
    if g.bn_momentum.is_some() || g.bn_eps.is_some() {
        if let Some(m) = g.bn_momentum.filter(|m| !(0.0..=1.0).contains(m)) {
            return Err(Error::config(
                "--bn-momentum",
                format!("{m} must be in [0, 1]: PyTorch's convention, the weight of the NEW batch statistic (default 0.1; Keras' 0.99 is 0.01)"),
            ));
        }
        if let Some(e) = g.bn_eps.filter(|e| !(*e > 0.0 && e.is_finite())) {
            return Err(Error::config("--bn-eps", format!("{e} must be a positive number, e.g. 1e-5")));
        }
        if !options.network.has_batch_norm() {
            return Err(Error::config(
                if g.bn_momentum.is_some() { "--bn-momentum" } else { "--bn-eps" },
                format!("model {} has no batch-norm layers; leave it out", options.model),
            ));
        }
        options.network = options.network.with_batch_norm(g.bn_momentum, g.bn_eps);
    }
    options.seed = g.seed.unwrap_or(0);
    Ok(())
}

/// `--augment` and `--crop-padding` as an [`Augment`]: a padding alone
/// means a crop; a crop without one pads 2 pixels.
pub(super) fn augment_of(list: Option<&str>, padding: Option<usize>) -> normlab::Result<Augment> {
    let (crop, hflip) = match list {
        Some(l) => parse_augment(l)?,
        None => (padding.is_some_and(|p| p > 0), false),
    };
    if !crop && padding.is_some_and(|p| p > 0) {
        return Err(normlab::Error::config(
            "--crop-padding",
            "pads the random crop: add crop to --augment (e.g. --augment crop), or leave --crop-padding out",
        ));
    }
    Ok(Augment { crop_padding: if crop { padding.unwrap_or(2) } else { 0 }, hflip })
}

/// An error in the options a model file's `[train]` table gives, with the
/// file, the line and the key.
fn in_train_table(file: &Path, d: &TrainDefaults, e: normlab::Error) -> normlab::Error {
    let normlab::Error::Config { field, message } = e else { return e };
    let key = match (field.strip_prefix("--"), field.as_str()) {
        (Some(option), _) => option.replace('-', "_"),
        (None, "learning rate") => "lr".to_string(),
        (None, f) => f.replace(' ', "_"),
    };
    normlab::Error::data(file, format!("{}: {message}", d.place(&key)))
}

/// `--model`'s value as a model file: a name ending in `.toml`, or an
/// existing file (the built-in names are neither).
pub(super) fn model_file(value: &str) -> Option<&Path> {
    let path = Path::new(value);
    (value.ends_with(".toml") || (ModelKind::parse(value).is_err() && path.is_file())).then_some(path)
}

/// The recipes of `--preset`: a name and a model file (with its `[train]`
/// table) built into the program.
pub(super) const PRESETS: [(&str, &str); 1] = [("fast", include_str!("../../presets/fast.toml"))];

/// Where `train` takes its network from.
pub(super) enum ModelSource<'a> {
    /// A built-in model's name (`--model bn-lenet`, or no `--model`).
    Builtin(&'a str),
    /// A model file (`--model FILE.toml`).
    File(&'a Path),
    /// A preset's name and its model file's text (`--preset fast`).
    Preset(&'static str, &'static str),
}

impl<'a> ModelSource<'a> {
    pub(super) fn of(args: &'a TrainArgs) -> Self {
        if let Some(preset) = &args.preset {
            // clap admits only the names in PRESETS
            if let Some(&(name, text)) = PRESETS.iter().find(|p| p.0 == preset) {
                return ModelSource::Preset(name, text);
            }
        }
        match args.model.as_deref() {
            Some(value) => model_file(value).map_or(ModelSource::Builtin(value), ModelSource::File),
            None => ModelSource::Builtin(ModelKind::BnLenet.name()),
        }
    }

    /// What messages call it: the file's path, or `preset NAME`.
    pub(super) fn origin(&self) -> PathBuf {
        match self {
            ModelSource::File(file) => file.to_path_buf(),
            ModelSource::Preset(name, _) => PathBuf::from(format!("preset {name}")),
            ModelSource::Builtin(name) => PathBuf::from(name),
        }
    }

    /// The run's model name: a file's name without `.toml`, a preset's name.
    pub(super) fn run_name(&self) -> String {
        match self {
            ModelSource::File(file) => model_file_name(file),
            ModelSource::Preset(name, _) | ModelSource::Builtin(name) => name.to_string(),
        }
    }

    /// The network and `[train]` table of a model file or preset, checked
    /// for examples of shape `input` where the file gives none.
    pub(super) fn read(&self, input: &[usize]) -> normlab::Result<(ModelSpec, Option<TrainDefaults>)> {
        let text = match self {
            ModelSource::File(file) => {
                let (spec, defaults) = ModelSpec::read_model_file(file, None)?;
                return match spec.input {
                    Some(_) => Ok((spec, defaults)),
                    None => ModelSpec::read_model_file(file, Some(input)),
                };
            }
            ModelSource::Preset(_, text) => text,
            ModelSource::Builtin(name) => {
                return Err(normlab::Error::config("--model", format!("{name} is built in, not a model file")))
            }
        };
        let origin = self.origin();
        let (spec, defaults) = ModelSpec::read_model_text(text, &origin, None)?;
        match spec.input {
            Some(_) => Ok((spec, defaults)),
            None => ModelSpec::read_model_text(text, &origin, Some(input)),
        }
    }
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
        if e != trainer.options.epochs && trainer.options.schedule.kind.depends_on_length() {
            return Err(normlab::Error::config(
                "--epochs",
                format!(
                    "{} runs a {} schedule over its {} epochs, which cannot change once it started; leave --epochs out, \
                     or start a new run with --out",
                    dir.display(),
                    trainer.options.schedule.kind.name(),
                    trainer.options.epochs
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

    fn best_path(&self) -> PathBuf {
        self.out.join(BEST_FILE)
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
            "best": best_epoch(&trainer.history).map(|(epoch, acc)| json!({"epoch": epoch, "val_acc": acc, "file": BEST_FILE})),
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
    let model = checkpoint::to_bytes(&mut trainer.net, &run.name, &network, &meta)?;
    write_atomic(&run.model_path(), &model)?;
    // the best epoch's model, the same bytes as model.safetensors then
    // (a resume rewrites it only when its own epoch is the best)
    if best_epoch(&trainer.history).is_some_and(|(e, _)| e == trainer.epoch()) {
        write_atomic(&run.best_path(), &model)?;
    }
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
