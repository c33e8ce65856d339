//! `normlab eval`: test loss, accuracy, per-class accuracy and the confusion matrix.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use normlab::data::CLASS_NAMES;
use normlab::train::{self, checkpoint};

use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Evaluate a checkpoint on the 10,000 test images (prediction mode)",
    after_help = "Example:\n  normlab eval --checkpoint runs/bn-lenet-20261126-120000/model.safetensors --json"
)]
pub struct EvalArgs {
    /// A model.safetensors written by `normlab train`.
    #[arg(long, value_name = "FILE")]
    checkpoint: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on the first N test images only.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[arg(long, default_value_t = 500)]
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
    let per_class = e.per_class_accuracy();
    if args.json {
        let classes: serde_json::Map<String, serde_json::Value> =
            CLASS_NAMES.iter().zip(&per_class).map(|(n, a)| (n.to_string(), json!(a))).collect();
        println!(
            "{}",
            json!({"model": info.model, "checkpoint": args.checkpoint, "examples": e.examples, "val_loss": e.loss,
                   "val_acc": e.accuracy, "per_class_acc": classes, "confusion": e.confusion, "class_names": CLASS_NAMES})
        );
        return Ok(());
    }
    println!("{} ({}) on {} test images", args.checkpoint.display(), info.model, e.examples);
    println!("loss {:.4}  accuracy {:.4}\n", e.loss, e.accuracy);
    println!("{:<12} {:>8}", "class", "accuracy");
    for (name, acc) in CLASS_NAMES.iter().zip(&per_class) {
        println!("{name:<12} {acc:>8.4}");
    }
    println!("\nconfusion matrix (rows: true class, columns: predicted)");
    print!("{:<12}", "");
    for name in CLASS_NAMES {
        print!("{:>6}", short(name));
    }
    println!();
    for (i, row) in e.confusion.iter().enumerate() {
        print!("{:<12}", CLASS_NAMES[i]);
        for v in row {
            print!("{v:>6}");
        }
        println!();
    }
    Ok(())
}

/// Column headers short enough for a terminal.
fn short(name: &str) -> String {
    name.chars().filter(|c| c.is_alphanumeric()).take(5).collect()
}
