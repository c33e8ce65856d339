//! `normlab experiment NAME|all`: the chapter's questions, answered by
//! training several seeds of each setting and writing a report.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::download::IdxSet;
use crate::experiments::{self, ExperimentOptions, MAX_SEEDS};
use crate::locate::DataChoice;
use crate::rundir::{Owner, RunDir};

use super::args::{count, Count, PathArg};
use super::DataArgs;

/// `experiment --help`'s text after the options: the list of experiments
/// with their measured times, then the files and examples.
fn after_help() -> String {
    format!("{}\n\n{AFTER_LIST}", experiments::help_list())
}

const AFTER_LIST: &str = "\
Each writes report.md, epochs.csv, runs.csv, summary.csv, plots (SVG and PNG) and a
self-contained index.html into --out (default runs/experiment-NAME-<UTC time>;
for all: runs/experiments-<UTC time>/NAME/ and runs/experiments-<UTC time>/index.html).

Example:
  normlab experiment lr                              # the learning-rate exercise, 3 seeds
  normlab experiment lite --seeds 5 --epochs 10 --out runs/lite
  normlab experiment all --quick --data-dir tests/data/fashion-mnist-subset --out /tmp/exp
  normlab experiment batch-size --json --quiet       # the tables as JSON on stdout";

#[derive(clap::Args, Debug)]
#[command(
    about = "Run one of the chapter's experiments (or all) over several seeds and write a report",
    after_help = after_help()
)]
pub struct ExperimentArgs {
    /// lr | placement | lite | frozen-affine | bias | dropout | batch-size | recompute | deep | group-norm | ioffe-fig1 | noisy-bn | smoothness | small-batch | pit | whitening | block-whitening | structured | sparsify | all
    #[arg(value_name = "NAME")]
    name: String,
    /// Seeds per setting (mean ± std over them), at most 100.
    #[arg(long, value_name = "K", default_value_t = 3, allow_negative_numbers = true,
          value_parser = Count { min: 1, max: MAX_SEEDS as u64, example: "3" })]
    seeds: usize,
    /// Epochs per run (default: the experiment's own, see its report).
    #[arg(long, value_name = "E", allow_negative_numbers = true, value_parser = count(1, "5"))]
    epochs: Option<usize>,
    /// Output directory, new or empty (default runs/experiment-NAME-<UTC time>, with -2, -3, ... if taken).
    #[arg(long, value_name = "DIR", value_parser = PathArg)]
    out: Option<PathBuf>,
    /// Replace the experiment that --out holds, whole.
    #[arg(long, requires = "out")]
    force: bool,
    /// A small subset (1,000 training and 500 test images) and 2 epochs: checks the pipeline in seconds.
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    data: DataArgs,
    /// Train on the first N training images (default: the experiment's own).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = count(2, "10000"))]
    limit_train: Option<usize>,
    /// Print each experiment's summary (tables, reading, output directory) as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    /// Nothing for people: no progress lines (stderr), no readings
    /// (stdout); the reports are still written.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let all = args.name == "all";
    let exp = if all { None } else { Some(experiments::find(&args.name)?) };
    let (seeds, epochs, limit_train) = (args.seeds, args.epochs, args.limit_train);
    let stamp = super::utc_timestamp();
    let mut options = ExperimentOptions {
        seeds,
        epochs,
        quick: args.quick,
        limit_train,
        out: args.out.clone().unwrap_or_default(),
        log: !args.quiet,
    };
    options.validate()?;
    // the experiments' networks are the chapter's: 28x28 grey, ten classes
    let choice = args.data.choice(DataChoice::Idx(IdxSet::FashionMnist))?;
    if choice == DataChoice::ImageFolder {
        return Err(normlab::Error::config(
            "--dataset",
            "the experiments run on the MNIST family (fashion-mnist, mnist, kmnist); train on an image folder with \
             `normlab train --dataset image-folder`",
        )
        .into());
    }
    let mut dir = match &args.out {
        Some(out) => RunDir::claim(out, args.force, Owner::Experiment)?,
        None => RunDir::claim_new(
            Path::new("runs"),
            &if all { format!("experiments-{stamp}") } else { format!("experiment-{}-{stamp}", args.name) },
        )?,
    };
    let out = dir.path().to_path_buf();
    options.out = out.clone();
    let fm = crate::locate::load(&args.data.source(!args.quiet && super::stderr_is_terminal()))?;
    dir.begin_writing()?;
    let result = match exp {
        Some(exp) => experiments::run(exp, &fm, &options).map(|s| vec![s]),
        None => experiments::run_all(&fm, &options),
    };
    // what is finished stays: one experiment's report, or the index of
    // those of `all` done before the failure; anything less is removed
    if result.is_ok() || out.join("index.html").exists() {
        dir.keep();
    }
    let summaries = result?;
    drop(dir);
    for s in &summaries {
        if args.json {
            super::print_line(&serde_json::to_string(s)?)?;
        } else if !args.quiet {
            super::print_line(&format!(
                "{}: {:.1} s, report in {}",
                s.name,
                s.seconds,
                s.out.join("index.html").display()
            ))?;
            for line in &s.reading {
                super::print_line(&format!("  - {line}"))?;
            }
        }
    }
    if all {
        if args.json {
            super::print_line(&serde_json::json!({ "index": out.join("index.html") }).to_string())?;
        } else if !args.quiet {
            super::print_line(&format!("index of all experiments: {}", out.join("index.html").display()))?;
        }
    }
    Ok(())
}
