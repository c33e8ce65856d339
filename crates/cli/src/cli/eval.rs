//! `normlab eval`: test loss, accuracy, per-class accuracy and the confusion matrix.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use normlab::data::{Dataset, CLASS_NAMES};
use normlab::train::{self, checkpoint, checkpoint::CheckpointInfo};

use crate::locate::DataChoice;

use super::args::{count, PathArg};
use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Evaluate a checkpoint on the test images of its data set (prediction mode)",
    after_help = "Examples:\n  normlab eval --checkpoint runs/bn-lenet-20261126-120000/model.safetensors --json\n  normlab eval --checkpoint runs/photos/model.safetensors --data-dir photos   # an image-folder model"
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
    let fm = load_data_of(&args.data, &args.checkpoint, &info, !args.json && super::stderr_is_terminal())?;
    let names = class_names_of(&info);
    let e = train::evaluate(&mut net, &fm.test, args.batch_size, args.limit)?;
    super::refuse_non_finite(&args.checkpoint, "its test loss", e.loss)?;
    let per_class = e.per_class_accuracy();
    if args.json {
        let classes: serde_json::Map<String, serde_json::Value> =
            names.iter().zip(&per_class).map(|(n, a)| (n.to_string(), json!(a))).collect();
        outln!(
            "{}",
            json!({"model": info.model, "checkpoint": args.checkpoint, "examples": e.examples, "val_loss": e.loss,
                   "val_acc": e.accuracy, "per_class_acc": classes, "confusion": e.confusion, "class_names": names})
        );
        return Ok(());
    }
    outln!("{} ({}) on {} test images", args.checkpoint.display(), info.model, e.examples);
    outln!("loss {:.4}  accuracy {:.4}\n", e.loss, e.accuracy);
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).clamp(12, 32);
    outln!("{:<width$} {:>8}", "class", "accuracy");
    for (name, acc) in names.iter().zip(&per_class) {
        if acc.is_nan() {
            // no test image of this class (--limit)
            outln!("{name:<width$} {:>8}", "-");
        } else {
            outln!("{name:<width$} {acc:>8.4}");
        }
    }
    outln!("\nconfusion matrix (rows: true class, columns: predicted)");
    out!("{:<width$}", "");
    for name in &names {
        out!("{:>6}", short(name));
    }
    outln!();
    for (i, row) in e.confusion.iter().enumerate() {
        out!("{:<width$}", names[i]);
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

/// The class names a checkpoint records; Fashion-MNIST's for a file
/// without them (written before they were recorded).
pub fn class_names_of(info: &CheckpointInfo) -> Vec<String> {
    info.class_names.clone().unwrap_or_else(|| CLASS_NAMES.iter().map(|n| n.to_string()).collect())
}

/// The data set a checkpoint was trained on, as recorded (Fashion-MNIST
/// for a file without the record).
pub fn dataset_of(info: &CheckpointInfo) -> DataChoice {
    info.metadata
        .get(checkpoint::META_DATASET)
        .and_then(|name| DataChoice::parse(name).ok())
        .unwrap_or(DataChoice::Idx(crate::download::IdxSet::FashionMnist))
}

/// The data to evaluate `checkpoint` on: `--dataset`, else the one it was
/// trained on; images in the model's input shape; refused when its classes
/// are not the model's.
pub fn load_data_of(
    data: &super::DataArgs,
    path: &std::path::Path,
    info: &CheckpointInfo,
    progress: bool,
) -> normlab::Result<Dataset> {
    let [c, h, w] = info.input_shape;
    let (choice, fm) = data.load(dataset_of(info), progress, Some(c), h, w)?;
    let names = class_names_of(info);
    if fm.class_names != names {
        return Err(normlab::Error::config(
            "--dataset",
            format!(
                "{} ({}) has the classes [{}], but {} was trained on [{}]; evaluate it on its own data set ({}{})",
                fm.dir.display(),
                choice.name(),
                fm.class_names.join(", "),
                path.display(),
                names.join(", "),
                dataset_of(info).name(),
                if dataset_of(info) == DataChoice::ImageFolder { " with --data-dir naming its folder" } else { "" }
            ),
        ));
    }
    Ok(fm)
}
