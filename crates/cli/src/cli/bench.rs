//! `normlab bench`: kernels, training step and epoch, against the machine's
//! own measured limits.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::bench::{self, machine};
use normlab::models::ModelKind;
use normlab::train::{NoObserver, TrainOptions, Trainer};

use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Time the kernels, the BNLeNet training step and a full epoch, with the machine's FMA peak and memory bandwidth",
    after_help = "Examples:\n  normlab bench --threads 2             # text tables\n  normlab bench --threads 2 --json      # one JSON object (bench/compare/compare.py reads it)\n  normlab bench --no-epoch --budget 0.1 # quick\n  NORMLAB_ISA=avx2 normlab bench --suite # the network suite at AVX2\n  normlab bench --inference --threads 1 --batches 1,256 --networks bn-lenet,vgg-bn\n  normlab bench --inference --json --onnx-dir /tmp/onnx   # bench/compare/inference.py runs this"
)]
pub struct BenchArgs {
    /// Seconds of repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 0.3, allow_negative_numbers = true)]
    budget: f64,
    /// Skip the full training epoch on Fashion-MNIST.
    #[arg(long)]
    no_epoch: bool,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Time one training step of each network of the suite (bn-lenet,
    /// vgg-bn, resnet-bn, mlp-bn) instead of the kernels.
    #[arg(long)]
    suite: bool,
    /// Time eval-mode forward passes (prediction) of the suite networks,
    /// unfolded and with batch norm folded, at --batches.
    #[arg(long, conflicts_with = "suite")]
    inference: bool,
    /// With --suite or --inference: the networks to time, comma-separated
    /// (bn-lenet, vgg-bn, resnet-bn, mlp-bn; default: all).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    networks: Vec<String>,
    /// With --inference: the batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "SIZES", default_values_t = crate::bench::inference::BATCHES,
          value_parser = super::args::Count { min: 1, max: crate::bench::inference::MAX_BATCH as u64, example: "1,32,256" })]
    batches: Vec<usize>,
    /// With --inference: how many times the unfolded and folded networks
    /// take turns per batch size (the median is over all their calls).
    #[arg(long, default_value_t = 3, value_parser = super::args::Count { min: 1, max: 100, example: "3" })]
    rounds: usize,
    /// With --inference: also write the networks timed as ONNX models
    /// (<network>.onnx and <network>-folded.onnx) into this directory.
    #[arg(long, value_name = "DIR", value_parser = super::args::PathArg)]
    onnx_dir: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !(args.budget > 0.0 && args.budget <= 60.0) {
        return Err(normlab::Error::config("--budget", "must be between 0 and 60 seconds").into());
    }
    let networks = if args.networks.is_empty() {
        bench::suite::NETWORKS.iter().map(|s| s.to_string()).collect()
    } else {
        args.networks.clone()
    };
    if let Some(bad) = networks.iter().find(|n| !bench::suite::NETWORKS.contains(&n.as_str())) {
        return Err(normlab::Error::config(
            "--networks",
            format!("no network {bad:?}: choose from {}", bench::suite::NETWORKS.join(", ")),
        )
        .into());
    }
    if args.inference {
        return inference(&args, &networks);
    }
    let limits = machine::measure();
    if !args.json {
        outln!(
            "machine: {} threads, FMA peak {:.0} GFLOP/s ({}), triad {:.1} GB/s",
            limits.threads,
            limits.fma_gflops,
            limits.vector_isa,
            limits.triad_gbs
        );
    }
    if args.suite {
        return suite(&limits, &args, &networks);
    }
    let kernels = bench::kernels(&limits, args.budget)?;
    let mut epochs = Vec::new();
    if !args.no_epoch {
        let fm = crate::locate::load(&args.data.source(false))?;
        for kind in [ModelKind::BnLenet, ModelKind::BnLenetScratch] {
            let mut options = TrainOptions::chapter(kind);
            options.epochs = 1;
            let mut trainer = Trainer::new(options)?;
            let t = Instant::now();
            let (_, _, secs) = trainer.train_epoch(&fm.train, &mut NoObserver)?;
            let _ = t;
            epochs
                .push(json!({"model": kind.name(), "seconds": secs, "examples_per_sec": fm.train.len() as f64 / secs}));
        }
    }
    if args.json {
        outln!(
            "{}",
            json!({"impl": "normlab", "normlab_version": env!("CARGO_PKG_VERSION"), "threads": limits.threads,
                   "isa": normlab::isa::active().name(), "isa_detected": normlab::isa::detected().name(),
                   "machine": limits, "kernels": kernels, "epochs": epochs})
        );
        return Ok(());
    }
    outln!("\n{:<11} {:<16} {:<17} {:<18} {:>9} {:>9} {:>7}", "kernel", "impl", "pass", "shape", "ms", "rate", "limit");
    for k in &kernels {
        let rate = match (k.gbs, k.gflops) {
            (Some(g), _) => format!("{g:.1} GB/s"),
            (_, Some(f)) => format!("{f:.1} GF/s"),
            _ => String::new(),
        };
        let name = k.model.clone().unwrap_or_else(|| k.implementation.clone());
        outln!(
            "{:<11} {:<16} {:<17} {:<18} {:>9.3} {:>9} {:>6.1}%",
            k.kernel,
            name,
            k.pass,
            format!("{:?}", k.shape),
            k.ms,
            rate,
            100.0 * k.fraction_of_limit.unwrap_or(f64::NAN)
        );
    }
    for e in &epochs {
        outln!(
            "epoch {:<18} {:.2} s, {:.0} examples/s",
            e["model"].as_str().unwrap_or(""),
            e["seconds"].as_f64().unwrap_or(f64::NAN),
            e["examples_per_sec"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// `--suite`: one training step of each suite network, as a table or JSON.
fn suite(limits: &machine::Limits, args: &BenchArgs, networks: &[String]) -> Result<()> {
    let timings = bench::suite::run(limits.fma_gflops, args.budget, networks)?;
    if args.json {
        outln!(
            "{}",
            json!({"impl": "normlab", "normlab_version": env!("CARGO_PKG_VERSION"), "threads": limits.threads,
                   "isa": normlab::isa::active().name(), "machine": limits, "suite": timings})
        );
        return Ok(());
    }
    outln!(
        "\n{:<10} {:>6} {:>10} {:>12} {:>9} {:>9} {:>8}",
        "network",
        "batch",
        "step ms",
        "examples/s",
        "GFLOP",
        "GFLOP/s",
        "of peak"
    );
    for t in &timings {
        outln!(
            "{:<10} {:>6} {:>10.3} {:>12.0} {:>9.3} {:>9.1} {:>7.1}%",
            t.network,
            t.batch,
            t.step_ms,
            t.examples_per_sec,
            t.gflop_per_step,
            t.gflops,
            100.0 * t.fraction_of_peak
        );
    }
    Ok(())
}

/// `--inference`: eval-mode forward passes, unfolded and folded, as a table
/// or JSON.
fn inference(args: &BenchArgs, networks: &[String]) -> Result<()> {
    let threads = rayon::current_num_threads();
    let isa = normlab::isa::active().name();
    if !args.json {
        outln!(
            "machine: {threads} threads, {isa}; median of eval-mode forward passes (unfolded and folded take turns)"
        );
    }
    let timings = bench::inference::run(networks, &args.batches, args.budget, args.rounds, args.onnx_dir.as_deref())?;
    if args.json {
        outln!(
            "{}",
            json!({"impl": "normlab", "mode": "inference", "normlab_version": env!("CARGO_PKG_VERSION"),
                   "threads": threads, "isa": isa, "isa_detected": normlab::isa::detected().name(),
                   "budget_s": args.budget, "rounds": args.rounds, "inference": timings})
        );
        return Ok(());
    }
    outln!(
        "\n{:<10} {:>6} {:<9} {:>7} {:>12} {:>12} {:>10} {:>10}",
        "network",
        "batch",
        "variant",
        "layers",
        "latency ms",
        "images/s",
        "speedup",
        "max diff"
    );
    for pair in timings.chunks(2) {
        let unfolded_ms = pair[0].latency_ms;
        for t in pair {
            outln!(
                "{:<10} {:>6} {:<9} {:>7} {:>12.4} {:>12.0} {:>9.2}x {:>10.1e}",
                t.network,
                t.batch,
                t.variant,
                t.layers,
                t.latency_ms,
                t.images_per_sec,
                unfolded_ms / t.latency_ms,
                t.max_abs_diff
            );
        }
    }
    Ok(())
}
