//! `normlab recompute-stats`: population BN statistics for a saved model.

use std::path::PathBuf;

use anyhow::Result;
use serde_json::json;

use normlab::train::{self, checkpoint};

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
    /// Where to write the model with recomputed statistics.
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    out: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, default_value_t = 500, allow_negative_numbers = true, value_parser = count(2, "500"))]
    batch_size: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(args: RecomputeArgs) -> Result<()> {
    if args.batch_size < 2 {
        return Err(normlab::Error::config("batch size", "must be at least 2 to compute batch statistics").into());
    }
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    let fm = crate::locate::load(&args.data.source(!args.json && super::stderr_is_terminal()))?;
    let before = train::evaluate(&mut net, &fm.test, args.batch_size, None)?;
    let layers = train::recompute_bn_stats(&mut net, &fm.train, args.batch_size)?;
    let after = train::evaluate(&mut net, &fm.test, args.batch_size, None)?;
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(e) = info.metadata.get("epoch") {
        extra.push(("epoch", e.clone()));
    }
    extra.push(("bn_stats", "recomputed over the training set".into()));
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
