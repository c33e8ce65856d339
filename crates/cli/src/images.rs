//! Decoding PNG and JPEG files for `predict` and image-folder data sets:
//! refused from the header when too large, decoded under limits, then
//! converted to 1 (grey) or 3 (RGB) channels of bytes and resized to the
//! model's input, as channel planes (CHW, PyTorch's order).

use std::path::Path;

use image::{DynamicImage, ImageReader};
use normlab::{Error, Result};

/// Largest accepted image: a file declaring 100000 x 100000 pixels, or a
/// tiny JPEG declaring 16384 x 16384 (whose decoder would fill in the
/// missing data), is refused from its header, before anything is allocated.
pub const MAX_SIDE: u32 = 16_384;
pub const MAX_PIXELS: u64 = 50_000_000;
pub const MAX_ALLOC: u64 = 256 << 20;

/// What an image file's header says, read without decoding the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    /// Whether the image has colour (RGB or a palette), not only grey levels.
    pub colour: bool,
}

fn opened(path: &Path) -> Result<ImageReader<std::io::BufReader<std::fs::File>>> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(Error::data(path, "not a PNG or JPEG image; pass a .png or .jpg file"));
    }
    Ok(reader)
}

fn too_large(path: &Path) -> Error {
    Error::data(
        path,
        format!(
            "image is too large (more than {MAX_SIDE}x{MAX_SIDE} pixels, {} megapixels or {} MiB decoded); resize it first",
            MAX_PIXELS / 1_000_000,
            MAX_ALLOC >> 20
        ),
    )
}

/// Reads the header alone: the size and whether there is colour. Refuses
/// an image too large to decode.
pub fn read_header(path: &Path) -> Result<Header> {
    use image::ImageDecoder;
    let bad_header = |e: image::ImageError| {
        Error::data(path, format!("cannot read the image header ({e}); is it a complete PNG or JPEG?"))
    };
    let decoder = opened(path)?.into_decoder().map_err(bad_header)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(too_large(path));
    }
    let colour = decoder.color_type().has_color();
    Ok(Header { width, height, colour })
}

/// Decodes a PNG or JPEG of any size and colour under the limits above.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    let bad = |msg: String| Error::data(path, msg);
    let mut reader = opened(path)?;
    // the header alone gives the size: check it before decoding anything
    let (width, height) = opened(path)?
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the image header ({e}); is it a complete PNG or JPEG?")))?;
    if width > MAX_SIDE || height > MAX_SIDE || width as u64 * height as u64 > MAX_PIXELS {
        return Err(too_large(path));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(path),
        other => bad(format!("cannot decode the image ({other}); is it a complete PNG or JPEG?")),
    })
}

/// `img` as `channels` (1: grey levels, 3: RGB) planes of `rows` x `cols`
/// bytes, resized with a triangle (bilinear) filter; one byte per value
/// whatever the source (16-bit, palette and alpha images included; alpha is
/// dropped).
pub fn to_planes(img: &DynamicImage, channels: usize, rows: usize, cols: usize) -> Vec<u8> {
    let (w, h) = (cols as u32, rows as u32);
    let filter = image::imageops::FilterType::Triangle;
    if channels == 3 {
        let small = image::imageops::resize(&img.to_rgb8(), w, h, filter);
        let mut out = vec![0u8; 3 * rows * cols];
        let plane = rows * cols;
        for (i, p) in small.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = p.0[c];
            }
        }
        out
    } else {
        image::imageops::resize(&img.to_luma8(), w, h, filter).into_raw()
    }
}
