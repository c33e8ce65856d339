//! `normlab export --onnx`: a checkpoint as an ONNX model for ONNX Runtime
//! and other deployment tools, optionally with its batch norms folded.

use std::path::{Path, PathBuf};

use anyhow::Result;

use normlab::models::Sequential;
use normlab::train::checkpoint::{self, CheckpointInfo};
use normlab::{rng, Error};

use super::args::PathArg;

#[derive(clap::Args, Debug)]
#[command(
    about = "Export a checkpoint as an ONNX model (opset 17, input `images`, output `logits`, dynamic batch)",
    after_help = "Examples:\n  normlab export --onnx --checkpoint model.safetensors --out model.onnx\n  normlab export --onnx --fold --checkpoint model.safetensors --out model-folded.onnx\n\nThe graph computes the model in eval mode (running statistics). Check it with onnx.checker and run it in\nONNX Runtime: tools/check_onnx.py does both."
)]
pub struct ExportArgs {
    /// Write ONNX (the only format, required so that the file's format is
    /// said on the command line).
    #[arg(long, required = true)]
    onnx: bool,
    /// A model.safetensors written by `normlab train` or `normlab fold`.
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    /// Fold every batch norm that follows a convolution or linear layer into
    /// it first (same outputs, fewer operators).
    #[arg(long)]
    fold: bool,
    /// The .onnx file to write (replaced atomically).
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    out: PathBuf,
}

/// The network a checkpoint holds, built unfused (so that every layer, each
/// batch norm included, is one entry of the model), in eval mode.
pub(super) fn load_unfused(path: &Path) -> normlab::Result<(Sequential<f32>, CheckpointInfo)> {
    let info = checkpoint::info(path)?;
    let mut net = info.network.spec().network::<f32>()?.fusion(false);
    net.build(&info.input, &mut rng::seeded(0))
        .map_err(|e| Error::checkpoint(path, format!("the network description in the metadata is invalid: {e}")))?;
    checkpoint::load_into(&mut net, path)?;
    net.eval();
    Ok((net, info))
}

pub fn run(args: ExportArgs) -> Result<()> {
    if args.out.extension().is_none_or(|e| e != "onnx") {
        return Err(Error::config("--out", format!("{} should end in .onnx", args.out.display())).into());
    }
    let (mut net, info) = load_unfused(&args.checkpoint)?;
    let folded = if args.fold { net.fold_batch_norms()? } else { 0 };
    let source = args.checkpoint.display().to_string();
    let metadata =
        [("normlab.model", info.model.clone()), ("normlab.checkpoint", source), ("normlab.folded", folded.to_string())];
    let bytes = crate::onnx::export(&net, &info.model, &metadata)?;
    normlab::fsutil::write_atomic(&args.out, &bytes)?;
    super::say(format_args!(
        "wrote {} ({} bytes, opset {}, {} batch norm{} folded)",
        args.out.display(),
        bytes.len(),
        crate::onnx::OPSET,
        folded,
        if folded == 1 { "" } else { "s" }
    ));
    Ok(())
}
