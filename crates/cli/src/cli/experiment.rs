//! `normlab experiment NAME|all`: the chapter's questions, answered by
//! training several seeds of each setting and writing a report.

use std::path::PathBuf;

use anyhow::Result;

use crate::experiments::{self, ExperimentOptions, Summary, MAX_SEEDS};

use super::args::{count, Count, PathArg};
use super::DataArgs;

const AFTER_HELP: &str = "\
Experiments (time at the defaults, 3 seeds, measured on 2 cores):
  lr              BN vs no BN over learning rates 0.01..100; largest lr that trains   (about 4.5 min)
  placement       BN before/after the activation; every layer, conv only, fc only     (about 1 min)
  lite            full BN vs centring only vs scaling only vs none                     (about 1 min)
  frozen-affine   learnable gamma and beta vs fixed at 1 and 0                         (about 40 s)
  bias            biases in front of BN on vs off: parameters, accuracy, and why       (about 25 s)
  dropout         BN vs dropout 0.5 vs both vs neither                                 (about 1.5 min)
  batch-size      batch 16..512 with lr scaled linearly, BN vs layer norm              (about 2 min)
  recompute       val accuracy per epoch with running vs recomputed statistics         (about 1 min)
  deep            20-layer sigmoid/ReLU network, no norm vs BN vs LN; activation maps  (about 1 min)
  group-norm      research exercise: group norm vs BN vs LN, batch 128 and 16          (about 1 min)
  all             every one of them, and a top-level index.html linking each (about 14 min)

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
    after_help = AFTER_HELP
)]
pub struct ExperimentArgs {
    /// lr | placement | lite | frozen-affine | bias | dropout | batch-size | recompute | deep | group-norm | all
    #[arg(value_name = "NAME")]
    name: String,
    /// Seeds per setting (mean ± std over them), at most 100.
    #[arg(long, value_name = "K", default_value_t = 3, allow_negative_numbers = true,
          value_parser = Count { min: 1, max: MAX_SEEDS as u64, example: "3" })]
    seeds: usize,
    /// Epochs per run (default: the experiment's own, see its report).
    #[arg(long, value_name = "E", allow_negative_numbers = true, value_parser = count(1, "5"))]
    epochs: Option<usize>,
    /// Output directory.
    #[arg(long, value_name = "DIR", value_parser = PathArg)]
    out: Option<PathBuf>,
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
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = super::utc_timestamp();
        PathBuf::from("runs").join(if all {
            format!("experiments-{stamp}")
        } else {
            format!("experiment-{}-{stamp}", args.name)
        })
    });
    let options =
        ExperimentOptions { seeds, epochs, quick: args.quick, limit_train, out: out.clone(), log: !args.quiet };
    options.validate()?;
    normlab::fsutil::ensure_writable_dir(&out)?;
    let fm = crate::locate::load(&args.data.source(!args.quiet && super::stderr_is_terminal()))?;
    let print = |s: &Summary| -> Result<()> {
        if args.json {
            outln!("{}", serde_json::to_string(s)?);
        } else if !args.quiet {
            outln!("{}: {:.1} s, report in {}", s.name, s.seconds, s.out.join("index.html").display());
            for line in &s.reading {
                outln!("  - {line}");
            }
        }
        Ok(())
    };
    match exp {
        Some(exp) => print(&experiments::run(exp, &fm, &options)?)?,
        None => {
            for s in experiments::run_all(&fm, &options)? {
                print(&s)?;
            }
            if args.json {
                outln!("{}", serde_json::json!({ "index": out.join("index.html") }));
            } else if !args.quiet {
                outln!("index of all experiments: {}", out.join("index.html").display());
            }
        }
    }
    Ok(())
}
