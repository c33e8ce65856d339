//! `normlab predict`: classify PNG or JPEG images of any size and colour.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use normlab::loss::softmax_rows;
use normlab::train::checkpoint;
use normlab::{Error, Tensor};

use super::args::PathArg;

#[derive(clap::Args, Debug)]
#[command(
    about = "Predict the class of images (PNG/JPEG, any size; converted to the model's input, 28x28 grey or RGB)",
    after_help = "Examples:\n  normlab predict --checkpoint model.safetensors shoe.png bag.jpg\n  normlab predict --checkpoint model.safetensors --invert photo.jpg   # dark object on a light background\n\nFashion-MNIST images are light objects on a black background; use --invert for photos."
)]
pub struct PredictArgs {
    #[arg(long, value_name = "FILE", value_parser = PathArg)]
    checkpoint: PathBuf,
    /// Invert grey levels (for dark-on-light photos).
    #[arg(long)]
    invert: bool,
    /// Print one JSON object per image.
    #[arg(long)]
    json: bool,
    #[arg(required = true, value_name = "IMAGE", value_parser = PathArg)]
    images: Vec<PathBuf>,
}

/// Decodes any PNG/JPEG into the model's input: `shape` = `[channels,
/// rows, cols]`, values in [0, 1] (1 channel: grey levels, 3: RGB).
pub fn load_image(path: &Path, invert: bool, shape: [usize; 3]) -> normlab::Result<Vec<f32>> {
    check_image_path(path)?;
    let img = crate::images::decode(path)?;
    let [channels, rows, cols] = shape;
    let planes = crate::images::to_planes(&img, channels, rows, cols);
    drop(img);
    Ok(planes
        .into_iter()
        .map(|p| {
            let v = p as f32 / 255.0;
            if invert {
                1.0 - v
            } else {
                v
            }
        })
        .collect())
}

/// A directory, `-` (stdin), a missing file or a device is said to be so
/// with what to pass instead, before the decoder sees it.
fn check_image_path(path: &Path) -> normlab::Result<()> {
    let fix = "pass PNG or JPEG files";
    if path.as_os_str() == "-" {
        return Err(Error::data(path, format!("images are not read from stdin; save the image to a file and {fix}")));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::data(path, format!("is a directory; {fix}, e.g. {}/*.png", path.display()))),
        Ok(m) if !m.is_file() => {
            Err(Error::data(path, format!("is not a regular file (a device, FIFO or socket); {fix}")))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::data(path, format!("{e}; check the path, and {fix}")))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

pub fn run(args: PredictArgs) -> Result<()> {
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    net.eval();
    let names = super::eval::class_names_of(&info);
    let [c, h, w] = info.input_shape;
    for path in &args.images {
        let pixels = load_image(path, args.invert, info.input_shape)?;
        // one image at a time: prediction-mode BN needs no batch
        let x = Tensor::from_vec(&[1, c, h, w], pixels)?;
        let probs = softmax_rows(net.forward(&x)?).remove(0);
        let worst = probs.iter().copied().find(|p| !p.is_finite()).unwrap_or(0.0);
        super::refuse_non_finite(&args.checkpoint, "a class probability", worst)?;
        let mut ranked: Vec<(usize, f64)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<(usize, f64)> = ranked.into_iter().take(3).collect();
        if args.json {
            let list: Vec<_> =
                top.iter().map(|&(c, p)| json!({"class": c, "name": names[c], "probability": p})).collect();
            outln!("{}", json!({"image": path, "model": info.model, "top": list}));
        } else {
            let text: Vec<String> = top.iter().map(|&(c, p)| format!("{} {:.3}", names[c], p)).collect();
            outln!("{}: {}", path.display(), text.join(", "));
        }
    }
    Ok(())
}
