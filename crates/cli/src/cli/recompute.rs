//! `normlab recompute-stats`: population BN statistics for a saved model.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use crate::rundir::RUN_FILES;
use normlab::data::FashionMnist;
use normlab::models::Sequential;
use normlab::train::{self, checkpoint};
use normlab::Error;

use super::args::{count, PathArg};
use super::DataArgs;

#[derive(clap::Args, Debug)]
#[command(
    about = "Recompute every BN layer's running statistics over the whole training set (PyTorch's update_bn)",
    after_help = "Example:\n  normlab recompute-stats --checkpoint runs/x/model.safetensors --out runs/x/model-precise-bn.safetensors"
)]
pub struct RecomputeArgs {
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    /// Where to write the model with recomputed statistics: a new file, not
    /// the checkpoint itself nor a file of a run (model.safetensors, ...).
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    out: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 500, allow_negative_numbers = true, value_parser = count(2, "500"))]
    batch_size: usize,
    #[arg(long)]
    json: bool,
}

/// The fewest training images the statistics are recomputed over: each
/// BN layer of a fully connected layer sees one value per image and
/// feature, and a variance over fewer than 100 values is off by more than
/// 14% (its relative standard error is about sqrt(2 / (n - 1))), too noisy
/// to replace the running statistics that training averaged over thousands.
pub const MIN_IMAGES: usize = 100;

/// The number of batch-norm layers of `net`.
pub fn bn_layers(net: &mut Sequential<f32>) -> usize {
    net.layers_mut().iter_mut().filter_map(|l| l.as_batch_norm_mut()).count()
}

/// `train --recompute-stats` on a model without BN is refused before training.
pub fn check_has_batch_norm(net: &mut Sequential<f32>, model: &str, fix: &str) -> normlab::Result<()> {
    if bn_layers(net) == 0 {
        return Err(Error::config(
            "--recompute-stats",
            format!("model {model} has no batch-norm layers, so there are no statistics to recompute; {fix}"),
        ));
    }
    Ok(())
}

/// Refuses data with fewer than [`MIN_IMAGES`] training images.
pub fn check_enough_images(fm: &FashionMnist) -> normlab::Result<()> {
    let n = fm.train.len();
    if n < MIN_IMAGES {
        return Err(Error::data(
            &fm.dir,
            format!(
                "holds {n} training images; recomputing BN statistics needs at least {MIN_IMAGES} \
                 (fewer give estimates too noisy to replace the running ones); use a directory with more training images"
            ),
        ));
    }
    Ok(())
}

/// Refuses an `--out` that would destroy something or cannot be written,
/// before any work: the checkpoint itself (by any path), a file of a run's
/// directory, a directory, a place that cannot be written.
fn check_out(out: &Path, checkpoint: &Path) -> normlab::Result<()> {
    let bad = |message: String| Error::config("--out", message);
    let o = out.display();
    let stem = checkpoint.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let suggestion = checkpoint.with_file_name(format!("{stem}-precise-bn.safetensors"));
    if out.is_dir() {
        return Err(bad(format!("{o} is a directory; give a file name, e.g. {}", suggestion.display())));
    }
    let Some(name) = out.file_name() else {
        return Err(bad(format!("{o} names no file; give a file name, e.g. {}", suggestion.display())));
    };
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        let what = if parent.exists() { "is not a directory" } else { "does not exist" };
        return Err(bad(format!("{} {what}; create it, or choose another --out", parent.display())));
    }
    // the same file by any path: `./`, `..`, a symbolic or a hard link
    let same_inode = match (fs::metadata(out), fs::metadata(checkpoint)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let same_path = match (fs::canonicalize(parent), fs::canonicalize(checkpoint)) {
        (Ok(p), Ok(c)) => p.join(name) == c,
        _ => false,
    };
    if same_inode || same_path {
        return Err(bad(format!(
            "{o} is the --checkpoint file itself; recompute-stats writes a new file and keeps the one it reads: \
             choose another --out, e.g. {}",
            suggestion.display()
        )));
    }
    let run_dir = RUN_FILES.iter().any(|f| parent.join(f).exists());
    if run_dir && name.to_str().is_some_and(|n| RUN_FILES.contains(&n)) {
        return Err(bad(format!(
            "{o} is a file of the run in {} (eval, --resume and its report read it); \
             choose another name, e.g. {}",
            parent.display(),
            parent.join("model-precise-bn.safetensors").display()
        )));
    }
    // writable? (a probe of its own name: the temporary file of the real
    // write may already be there, made by someone else)
    let probe = parent.join(format!(".normlab-write-test-{}", std::process::id()));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(bad(format!("{o} cannot be written ({e}); choose another --out"))),
    }
}

pub fn run(args: RecomputeArgs) -> Result<()> {
    if args.batch_size < 2 {
        return Err(normlab::Error::config("batch size", "must be at least 2 to compute batch statistics").into());
    }
    check_out(&args.out, &args.checkpoint)?;
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    if bn_layers(&mut net) == 0 {
        return Err(Error::checkpoint(
            &args.checkpoint,
            format!(
                "model {} has no batch-norm layers, so there are no statistics to recompute; \
                 recompute-stats is for models with BN, such as bn-lenet",
                info.model
            ),
        )
        .into());
    }
    let fm = super::eval::load_data_of(&args.data, &args.checkpoint, &info, !args.json && super::stderr_is_terminal())?;
    check_enough_images(&fm)?;
    let before = train::evaluate(&mut net, &fm.test, args.batch_size, None)?;
    // a model whose outputs overflow gets no new file and no NaN printed
    super::refuse_non_finite(&args.checkpoint, "its test loss", before.loss)?;
    let layers = train::recompute_bn_stats(&mut net, &fm.train, args.batch_size)?;
    let after = train::evaluate(&mut net, &fm.test, args.batch_size, None)?;
    super::refuse_non_finite(&args.checkpoint, "its test loss with the recomputed statistics", after.loss)?;
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(e) = info.metadata.get("epoch") {
        extra.push(("epoch", e.clone()));
    }
    extra.push(("bn_stats", "recomputed over the training set".into()));
    // what the model's data looks like stays recorded
    for key in [checkpoint::META_DATASET, checkpoint::META_CLASS_NAMES, checkpoint::META_INPUT_SHAPE] {
        if let Some(v) = info.metadata.get(key) {
            extra.push((key, v.clone()));
        }
    }
    checkpoint::save(&mut net, &info.model, &info.network, &extra, &args.out)?;
    if args.json {
        outln!(
            "{}",
            json!({"bn_layers": layers, "val_acc_before": before.accuracy, "val_acc_after": after.accuracy,
                   "val_loss_before": before.loss, "val_loss_after": after.loss, "out": args.out})
        );
    } else {
        outln!(
            "recomputed {layers} BN layers over {} training images: val acc {:.4} -> {:.4}, val loss {:.4} -> {:.4}; wrote {}",
            fm.train.len(),
            before.accuracy,
            after.accuracy,
            before.loss,
            after.loss,
            args.out.display()
        );
    }
    Ok(())
}
