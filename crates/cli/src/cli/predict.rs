//! `normlab predict`: classify PNG or JPEG images of any size and colour.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

use normlab::loss::softmax_rows;
use normlab::train::checkpoint;
use normlab::{Error, Tensor};

use super::args::{count, PathArg};

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
    /// Print one JSON object per image (JSON lines).
    #[arg(long)]
    json: bool,
    /// How many of the most likely classes to show per image.
    #[arg(long, value_name = "K", default_value_t = 3, allow_negative_numbers = true, value_parser = count(1, "3"))]
    top: usize,
    /// Images run through the network together.
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true, value_parser = count(1, "64"))]
    batch_size: usize,
    /// Image files, or directories whose .png/.jpg/.jpeg files are all read
    /// (in name order). A file that cannot be read is reported and skipped;
    /// the command then exits with status 2 at the end.
    #[arg(required = true, value_name = "IMAGE|DIR", value_parser = PathArg)]
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

/// The image files to classify: each file as given, and the PNG and JPEG
/// files of each directory in name order (not its subdirectories).
fn image_paths(inputs: &[PathBuf]) -> normlab::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            paths.push(input.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| Error::io(input, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        if found.is_empty() {
            return Err(Error::data(
                input,
                "is a directory without .png, .jpg or .jpeg files; pass images or a folder of them",
            ));
        }
        found.sort();
        paths.extend(found);
    }
    Ok(paths)
}

pub fn run(args: PredictArgs) -> Result<()> {
    let (mut net, info) = checkpoint::load(&args.checkpoint)?;
    net.eval();
    let names = super::eval::class_names_of(&info);
    let [c, h, w] = info.input_shape;
    let paths = image_paths(&args.images)?;
    let classes = net.output_shape().iter().product::<usize>();
    let top = args.top.min(classes);
    let mut failed = 0usize;
    // decoded images wait here until a batch is full (or the last one)
    let mut pending: Vec<(&PathBuf, Vec<f32>)> = Vec::with_capacity(args.batch_size);
    for (i, path) in paths.iter().enumerate() {
        match load_image(path, args.invert, info.input_shape) {
            Ok(pixels) => pending.push((path, pixels)),
            // one image: its error is the command's, on one line
            Err(e) if paths.len() == 1 => return Err(e.into()),
            Err(e) => {
                failed += 1;
                super::say(format_args!("error: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")));
            }
        }
        if pending.len() == args.batch_size || (i + 1 == paths.len() && !pending.is_empty()) {
            let n = pending.len();
            let pixels: Vec<f32> = pending.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let x = Tensor::from_vec(&[n, c, h, w], pixels)?;
            let rows = softmax_rows(net.predict(&x)?);
            for ((path, _), probs) in pending.drain(..).zip(rows) {
                let worst = probs.iter().copied().find(|p| !p.is_finite()).unwrap_or(0.0);
                super::refuse_non_finite(&args.checkpoint, "a class probability", worst)?;
                let mut ranked: Vec<(usize, f64)> = probs.into_iter().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                ranked.truncate(top);
                let name = |k: usize| names.get(k).cloned().unwrap_or_else(|| format!("class {k}"));
                if args.json {
                    let list: Vec<_> =
                        ranked.iter().map(|&(c, p)| json!({"class": c, "name": name(c), "probability": p})).collect();
                    outln!("{}", json!({"image": path, "model": info.model, "top": list}));
                } else {
                    let text: Vec<String> = ranked.iter().map(|&(c, p)| format!("{} {:.3}", name(c), p)).collect();
                    outln!("{}: {}", path.display(), text.join(", "));
                }
            }
        }
    }
    if failed > 0 {
        return Err(Error::config(
            "IMAGE",
            format!("{failed} of {} images could not be read (each named above) and were skipped", paths.len()),
        )
        .into());
    }
    Ok(())
}
