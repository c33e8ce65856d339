//! `normlab eval`: test loss, accuracy, per-class accuracy and the confusion matrix.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use normlab::data::CLASS_NAMES;
use normlab::train::{self, checkpoint};

use super::args::{count, PathArg};
use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Evaluate a checkpoint on the 10,000 test images (prediction mode)",
    after_help = "Example:\n  normlab eval --checkpoint runs/bn-lenet-20261126-120000/model.safetensors --json"
)]
pub struct EvalArgs {
    /// A model.safetensors written by `normlab train`.
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = count(1, "1000"))]
    limit: Option<usize>,
    #[arg(long, default_value_t = 500, allow_negative_numbers = true, value_parser = count(1, "500"))]
    batch_size: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        return Err(normlab::Error::config("--batch-size", "must be at least 1").into());
    }
    if args.limit == Some(0) {
        return Err(normlab::Error::config("--limit", "must be at least 1").into());
    }
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    let fm = crate::locate::load(&args.data.source(!args.json && super::stderr_is_terminal()))?;
    let e = train::evaluate(&mut net, &fm.test, args.batch_size, args.limit)?;
    super::refuse_non_finite(&args.checkpoint, "its test loss", e.loss)?;
    let per_class = e.per_class_accuracy();
    if args.json {
        let classes: serde_json::Map<String, serde_json::Value> =
            CLASS_NAMES.iter().zip(&per_class).map(|(n, a)| (n.to_string(), json!(a))).collect();
        outln!(
            "{}",
            json!({"model": info.model, "checkpoint": args.checkpoint, "examples": e.examples, "val_loss": e.loss,
                   "val_acc": e.accuracy, "per_class_acc": classes, "confusion": e.confusion, "class_names": CLASS_NAMES})
        );
        return Ok(());
    }
    outln!("{} ({}) on {} test images", args.checkpoint.display(), info.model, e.examples);
    outln!("loss {:.4}  accuracy {:.4}\n", e.loss, e.accuracy);
    outln!("{:<12} {:>8}", "class", "accuracy");
    for (name, acc) in CLASS_NAMES.iter().zip(&per_class) {
        if acc.is_nan() {
            // no test image of this class (--limit)
            outln!("{name:<12} {:>8}", "-");
        } else {
            outln!("{name:<12} {acc:>8.4}");
        }
    }
    outln!("\nconfusion matrix (rows: true class, columns: predicted)");
    out!("{:<12}", "");
    for name in CLASS_NAMES {
        out!("{:>6}", short(name));
    }
    outln!();
    for (i, row) in e.confusion.iter().enumerate() {
        out!("{:<12}", CLASS_NAMES[i]);
        for v in row {
            out!("{v:>6}");
        }
        outln!();
    }
    Ok(())
}

/// Column headers short enough for a terminal.
fn short(name: &str) -> String {
    name.chars().filter(|c| c.is_alphanumeric()).take(5).collect()
}
