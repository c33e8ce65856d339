//! The chapter's questions, answered by training: `normlab experiment NAME`.
//!
//! Each experiment (one file each) lists its settings, trains each for
//! several seeds with the shared [`runner`], and hands the runs to the shared
//! [`report`] writer, which writes `report.md`, CSV files, plots (SVG and
//! PNG) and a self-contained `index.html` into the output directory.
//!
//! ```no_run
//! use normlab_cli::experiments::{self, ExperimentOptions};
//! let data = normlab_cli::locate::load(&Default::default()).unwrap();
//! let options = ExperimentOptions { quick: true, ..ExperimentOptions::new("out/lite") };
//! let summary = experiments::run(experiments::find("lite").unwrap(), &data, &options).unwrap();
//! println!("{}", summary.reading[0]);
//! ```

pub mod batch_size;
pub mod bias;
pub mod block_whitening;
pub mod deep;
pub mod dropout;
pub mod frozen_affine;
pub mod group_norm;
pub mod ioffe_fig1;
pub mod lite;
pub mod lr;
pub mod noisy_bn;
pub mod pit;
pub mod placement;
pub mod recompute;
pub mod report;
pub mod research;
pub mod runner;
pub mod small_batch;
pub mod smoothness;
pub mod sparsify;
pub mod steps;
pub mod structured;
pub mod whitening;

use std::path::{Path, PathBuf};
use std::time::Instant;

use normlab::data::{FashionMnist, Split};
use normlab::fsutil::{ensure_writable_dir, write_atomic};
use normlab::models::{LeNetConfig, Norm};
use normlab::{Error, Result};

pub use report::{IndexEntry, Report};
pub use runner::{Run, Runs, Setting, Stat, Status};

/// How much data and how many epochs an experiment uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Scale {
    pub epochs: usize,
    /// The first `train` training images and the first `val` test images.
    pub train: usize,
    pub val: usize,
}

/// The quick scale of every experiment (`--quick`, used by the tests).
pub const QUICK: Scale = Scale { epochs: 2, train: 1000, val: 500 };

/// One experiment of the registry.
pub struct Experiment {
    pub name: &'static str,
    pub title: &'static str,
    /// One line for `experiment --help`.
    pub summary: &'static str,
    pub question: &'static str,
    /// Epochs and data at the defaults.
    pub defaults: Scale,
    /// Measured wall time at the defaults on 2 cores, in seconds (stated in
    /// the report and in `--help`).
    pub measured_seconds: u32,
    pub run: fn(&Context) -> Result<Report>,
}

/// Every experiment, in the order `experiment all` runs them.
pub fn all() -> [&'static Experiment; 19] {
    [
        &lr::EXPERIMENT,
        &placement::EXPERIMENT,
        &lite::EXPERIMENT,
        &frozen_affine::EXPERIMENT,
        &bias::EXPERIMENT,
        &dropout::EXPERIMENT,
        &batch_size::EXPERIMENT,
        &recompute::EXPERIMENT,
        &deep::EXPERIMENT,
        &group_norm::EXPERIMENT,
        &ioffe_fig1::EXPERIMENT,
        &noisy_bn::EXPERIMENT,
        &smoothness::EXPERIMENT,
        &small_batch::EXPERIMENT,
        // exercise 7: other normalizing transforms
        &pit::EXPERIMENT,
        &whitening::EXPERIMENT,
        &block_whitening::EXPERIMENT,
        &structured::EXPERIMENT,
        &sparsify::EXPERIMENT,
    ]
}

pub fn names() -> Vec<&'static str> {
    all().iter().map(|e| e.name).collect()
}

/// The experiment called `name`, or a user error listing the valid names.
pub fn find(name: &str) -> Result<&'static Experiment> {
    all().into_iter().find(|e| e.name == name).ok_or_else(|| {
        Error::config(
            "experiment",
            format!("unknown experiment '{name}'; choose one of {}, or all", names().join(", ")),
        )
    })
}

/// The most seeds an experiment takes (`--seeds`): each seed trains every
/// setting once more (100 seeds of `lr` take about 2.5 hours on 2 cores),
/// and the seeds are listed before anything runs, so a larger count is
/// refused before anything is allocated.
pub const MAX_SEEDS: usize = 100;

/// What the command line controls.
#[derive(Clone, Debug)]
pub struct ExperimentOptions {
    /// Seeds 0..seeds for every setting.
    pub seeds: usize,
    /// Overrides the experiment's epochs.
    pub epochs: Option<usize>,
    /// A small subset and few epochs ([`QUICK`]).
    pub quick: bool,
    /// Overrides the number of training images.
    pub limit_train: Option<usize>,
    /// The experiment's output directory.
    pub out: PathBuf,
    /// Progress lines on stderr.
    pub log: bool,
}

impl ExperimentOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        ExperimentOptions { seeds: 3, epochs: None, quick: false, limit_train: None, out: out.into(), log: false }
    }
    pub fn validate(&self) -> Result<()> {
        if self.seeds == 0 || self.seeds > MAX_SEEDS {
            return Err(Error::config("--seeds", format!("must be from 1 to {MAX_SEEDS}, e.g. --seeds 3")));
        }
        if self.epochs == Some(0) {
            return Err(Error::config("--epochs", "must be at least 1, e.g. --epochs 5"));
        }
        if self.limit_train.is_some_and(|n| n < 2) {
            return Err(Error::config("--limit-train", "must be at least 2, e.g. --limit-train 10000"));
        }
        Ok(())
    }
}

/// What an experiment sees: its data subset, epochs, seeds and output directory.
pub struct Context {
    pub name: &'static str,
    pub train: Split,
    pub val: Split,
    pub epochs: usize,
    pub seeds: Vec<u64>,
    pub out: PathBuf,
    pub quick: bool,
    /// Sizes of the full splits the subsets come from.
    pub full_train: usize,
    pub full_val: usize,
    log: bool,
}

impl Context {
    pub fn log(&self, line: &str) {
        if self.log {
            crate::cli::say(format_args!("{line}"));
        }
    }
    /// One line on data, epochs and seeds for the report's setup.
    pub fn data_line(&self) -> String {
        format!(
            "Data: the first {} of the {} Fashion-MNIST training images for training, the first {} of the {} test images for validation; {} epoch{}; seeds {} (each seed sets the initial weights and the shuffling).",
            self.train.len(),
            self.full_train,
            self.val.len(),
            self.full_val,
            self.epochs,
            if self.epochs == 1 { "" } else { "s" },
            self.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        )
    }
    pub fn path(&self, file: &str) -> PathBuf {
        self.out.join(file)
    }
    /// Writes a text file into the output directory.
    pub fn write(&self, file: &str, text: &str) -> Result<()> {
        write_atomic(&self.path(file), text.as_bytes())
    }
}

/// The chapter's BNLeNet configuration (fused BN, PyTorch defaults).
pub fn bn_lenet() -> LeNetConfig {
    normlab::models::ModelKind::BnLenet.config()
}
/// The same network without normalization.
pub fn plain_lenet() -> LeNetConfig {
    LeNetConfig::with_norm(Norm::None)
}

/// What `run` returns: where the report is and what it says.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub title: String,
    pub question: String,
    pub out: PathBuf,
    pub seconds: f64,
    pub scale: Scale,
    pub seeds: usize,
    pub tables: Vec<report::Table>,
    pub reading: Vec<String>,
    /// The first plot's PNG (for the top-level index).
    pub first_plot: Option<String>,
}

fn scale_of(exp: &Experiment, options: &ExperimentOptions) -> Scale {
    let base = if options.quick { QUICK } else { exp.defaults };
    Scale {
        epochs: options.epochs.unwrap_or(base.epochs),
        train: options.limit_train.unwrap_or(base.train),
        val: base.val,
    }
}

/// Runs one experiment and writes its report into `options.out`.
pub fn run(exp: &Experiment, data: &FashionMnist, options: &ExperimentOptions) -> Result<Summary> {
    options.validate()?;
    ensure_writable_dir(&options.out)?;
    let started = Instant::now();
    let scale = scale_of(exp, options);
    let mut train = data.train.clone();
    train.truncate(scale.train);
    let mut val = data.test.clone();
    val.truncate(scale.val);
    let ctx = Context {
        name: exp.name,
        train,
        val,
        epochs: scale.epochs,
        seeds: (0..options.seeds as u64).collect(),
        out: options.out.clone(),
        quick: options.quick,
        full_train: data.train.len(),
        full_val: data.test.len(),
        log: options.log,
    };
    ctx.log(&format!(
        "[{}] {} : {} training and {} validation images, {} epochs, {} seeds, output in {}",
        exp.name,
        exp.title,
        ctx.train.len(),
        ctx.val.len(),
        ctx.epochs,
        options.seeds,
        options.out.display()
    ));
    let mut report = (exp.run)(&ctx)?;
    report.name = exp.name.into();
    report.title = exp.title.into();
    report.question = exp.question.into();
    report.seconds = started.elapsed().as_secs_f64();
    report.threads = rayon::current_num_threads();
    report.quick = options.quick;
    let d = exp.defaults;
    let at_defaults = !options.quick && options.epochs.is_none() && options.limit_train.is_none() && options.seeds == 3;
    report.timing_note = if at_defaults {
        format!("This run used the defaults ({} epochs, {} training images, 3 seeds).", d.epochs, d.train)
    } else {
        format!(
            "At the defaults ({} epochs, {} training images, 3 seeds) it takes about {} on 2 cores (measured){}.",
            d.epochs,
            d.train,
            human_seconds(exp.measured_seconds as f64),
            if options.quick {
                "; this was a --quick run, for checking the pipeline, not for reading the numbers"
            } else {
                ""
            }
        )
    };
    report::write_report(&options.out, &report)?;
    ctx.log(&format!("[{}] done in {:.1} s: {}", exp.name, report.seconds, options.out.join("index.html").display()));
    Ok(Summary {
        name: report.name.clone(),
        title: report.title.clone(),
        question: report.question.clone(),
        out: options.out.clone(),
        seconds: report.seconds,
        scale,
        seeds: options.seeds,
        first_plot: report.plots.first().map(|p| format!("{}.png", p.stem)),
        tables: report.tables,
        reading: report.reading,
    })
}

/// Runs every experiment into `out/<name>/` and writes `out/index.html`.
pub fn run_all(data: &FashionMnist, options: &ExperimentOptions) -> Result<Vec<Summary>> {
    options.validate()?;
    ensure_writable_dir(&options.out)?;
    let started = Instant::now();
    let mut summaries = Vec::new();
    for exp in all() {
        let mut o = options.clone();
        o.out = options.out.join(exp.name);
        summaries.push(run(exp, data, &o)?);
        write_top_index(&options.out, &summaries, started.elapsed().as_secs_f64(), options.quick)?;
    }
    Ok(summaries)
}

fn write_top_index(out: &Path, summaries: &[Summary], seconds: f64, quick: bool) -> Result<()> {
    let entries: Vec<IndexEntry> = summaries
        .iter()
        .map(|s| IndexEntry {
            name: s.name.clone(),
            title: s.title.clone(),
            question: s.question.clone(),
            dir: s.name.clone(),
            reading: s.reading.clone(),
            seconds: s.seconds,
            thumbnail: s.first_plot.as_ref().map(|p| format!("{}/{p}", s.name)),
        })
        .collect();
    let note = format!(
        "{} of {} experiments, {} in all on {} threads{}. Each card links to the experiment's page (tables, plots, setup, CSV files).",
        summaries.len(),
        all().len(),
        human_seconds(seconds),
        rayon::current_num_threads(),
        if quick { "; --quick runs: a small subset and 2 epochs, for checking the pipeline" } else { "" }
    );
    report::write_index(&out.join("index.html"), &entries, &note)
}

/// `42 s`, `3.5 min`.
pub fn human_seconds(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// The list of experiments in `experiment --help`: each one's summary and
/// measured time at the defaults, and the sum for `all`.
pub fn help_list() -> String {
    let width = all().iter().map(|e| e.name.len()).max().unwrap_or(0).max("all".len()) + 1;
    let mut out = String::from("Experiments (time at the defaults, 3 seeds, measured on 2 cores):\n");
    for e in all() {
        out += &format!("  {:width$} {} (about {})\n", e.name, e.summary, human_seconds(e.measured_seconds as f64));
    }
    let total: u32 = all().iter().map(|e| e.measured_seconds).sum();
    out += &format!(
        "  {:width$} every one of them, and a top-level index.html linking each (about {}, the sum above)",
        "all",
        human_seconds(total as f64)
    );
    out
}

/// `0.01`, `0.3`, `10`: a learning rate as it reads in labels.
pub fn fmt_lr(lr: f64) -> String {
    let s = format!("{lr:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
