//! `normlab fold`: a checkpoint with every batch norm that follows a
//! convolution or linear layer folded into it (`Sequential::fold_batch_norms`),
//! saved as a checkpoint of the smaller network that `eval`, `predict`,
//! `inspect` and `export` load like any other.

use std::path::PathBuf;

use anyhow::Result;

use normlab::models::Architecture;
use normlab::train::checkpoint;
use normlab::Error;

use super::args::PathArg;

#[derive(clap::Args, Debug)]
#[command(
    about = "Fold batch norms into the convolution or linear layer before them (same eval-mode outputs, faster)",
    after_help = "Example:\n  normlab fold --checkpoint runs/bn-lenet-*/model.safetensors --out bn-lenet-folded.safetensors\n  normlab eval --checkpoint bn-lenet-folded.safetensors\n\nIn eval mode a batch norm is a fixed scale and shift per channel, which the layer before it can apply\nthrough its weights and bias. The folded model is for prediction: training it again has no batch norm."
)]
pub struct FoldArgs {
    /// A model.safetensors written by `normlab train`.
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    /// The folded checkpoint to write (replaced atomically).
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    out: PathBuf,
}

pub fn run(args: FoldArgs) -> Result<()> {
    if args.out.extension().is_none_or(|e| e != "safetensors") {
        return Err(Error::config("--out", format!("{} should end in .safetensors", args.out.display())).into());
    }
    let (mut net, info) = super::export::load_unfused(&args.checkpoint)?;
    let folds = net.fold_batch_norms_traced()?;
    let spec = folds.apply(&info.network.spec())?;
    let model = if folds.count() > 0 { format!("{}-folded", info.model) } else { info.model.clone() };
    let extra = [("normlab.folded_from", args.checkpoint.display().to_string())];
    checkpoint::save(&mut net, &model, Architecture::Spec(spec), &extra, &args.out)?;
    super::say(format_args!(
        "wrote {} ({model}: {} batch norm{} folded, {} layers)",
        args.out.display(),
        folds.count(),
        if folds.count() == 1 { "" } else { "s" },
        net.len()
    ));
    Ok(())
}
