//! Augmentation of each training batch, on the tensor after it is filled:
//! a random crop with zero padding (torchvision's
//! `RandomCrop(size, padding=P)`) and a random horizontal flip
//! (`RandomHorizontalFlip()`, after the crop). For an image `x` of width
//! `W`, with `dy, dx` drawn uniformly from `-P..=P` and a fair coin `f`:
//!
//! ```text
//! cropped(i, j) = x(i + dy, j + dx), 0 outside the image
//! out(i, j)     = f ? cropped(i, W - 1 - j) : cropped(i, j)
//! ```
//!
//! The draws are taken one example after another from one random stream
//! before the (parallel) copy, so the result does not depend on the number
//! of threads, and a resumed run that restores the stream draws the same.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use rand::Rng as _;

use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which augmentations a training batch gets; none by default (the
/// chapter's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// Random crop with this many pixels of zero padding on each side (0: no crop).
    pub crop_padding: usize,
    /// Random horizontal flips (wrong for digits and letters: off by default).
    pub hflip: bool,
}

/// One example's draw: its shift and whether it is flipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Draw {
    dy: isize,
    dx: isize,
    flip: bool,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Augment::default()
    }

    /// Whether it changes anything.
    pub fn is_none(&self) -> bool {
        self.crop_padding == 0 && !self.hflip
    }

    /// `crop`, `crop,flip`, `flip` or `none`, as `--augment` writes it.
    pub fn describe(&self) -> String {
        match (self.crop_padding > 0, self.hflip) {
            (false, false) => "none".into(),
            (true, false) => "crop".into(),
            (false, true) => "flip".into(),
            (true, true) => "crop,flip".into(),
        }
    }

    /// Checks the padding against one image's `rows` and `cols`: a shift as
    /// large as the image would leave it blank.
    pub fn validate(&self, rows: usize, cols: usize) -> Result<()> {
        if self.crop_padding > 0 && self.crop_padding >= rows.min(cols) {
            return Err(Error::config(
                "--crop-padding",
                format!(
                    "{} pixels would shift a {rows}x{cols} image out of its frame; give less than {}, e.g. 2",
                    self.crop_padding,
                    rows.min(cols)
                ),
            ));
        }
        Ok(())
    }

    /// Augments every example of `x` `(N, C, H, W)` in place, drawing from
    /// `rng` (3 draws at most per example, in example order).
    pub fn apply(&self, x: &mut Tensor<f32>, rng: &mut Rng) {
        if self.is_none() || x.rank() != 4 {
            return;
        }
        let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let p = self.crop_padding as isize;
        let draws: Vec<Draw> = (0..n)
            .map(|_| {
                let (dy, dx) = if p > 0 { (rng.gen_range(-p..=p), rng.gen_range(-p..=p)) } else { (0, 0) };
                Draw { dy, dx, flip: self.hflip && rng.gen::<bool>() }
            })
            .collect();
        x.data_mut().par_chunks_mut(c * h * w).zip(draws.par_iter()).for_each_init(Vec::new, |scratch, (image, d)| {
            if d.dy == 0 && d.dx == 0 && !d.flip {
                return;
            }
            for plane in image.chunks_exact_mut(h * w) {
                scratch.clear();
                scratch.extend_from_slice(plane);
                for i in 0..h {
                    let row = &mut plane[i * w..(i + 1) * w];
                    let si = i as isize + d.dy;
                    if si < 0 || si >= h as isize {
                        row.fill(0.0);
                        continue;
                    }
                    let src = &scratch[si as usize * w..(si as usize + 1) * w];
                    for (j, out) in row.iter_mut().enumerate() {
                        let jj = if d.flip { w - 1 - j } else { j } as isize + d.dx;
                        *out = if (0..w as isize).contains(&jj) { src[jj as usize] } else { 0.0 };
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(n: usize) -> Tensor<f32> {
        Tensor::from_vec(&[n, 1, 3, 3], (0..n * 9).map(|v| (v % 9 + 1) as f32).collect()).unwrap()
    }

    /// Each output is the input shifted by at most the padding (zeros
    /// where it left the frame), or its mirror image, and the draws cover
    /// both flips and every shift.
    #[test]
    fn crops_are_shifts_with_zeros_and_flips_are_mirrors() {
        let a = Augment { crop_padding: 1, hflip: true };
        let mut x = image(400);
        a.apply(&mut x, &mut crate::rng::seeded(3));
        let src: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut seen = std::collections::HashSet::new();
        for out in x.data().chunks_exact(9) {
            let mut found = false;
            for dy in -1isize..=1 {
                for dx in -1isize..=1 {
                    for flip in [false, true] {
                        let want: Vec<f32> = (0..9)
                            .map(|k| {
                                let (i, j) =
                                    ((k / 3) as isize + dy, if flip { 2 - k % 3 } else { k % 3 } as isize + dx);
                                if (0..3).contains(&i) && (0..3).contains(&j) {
                                    src[(i * 3 + j) as usize]
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        if want == out {
                            found = true;
                            seen.insert((dy, dx, flip));
                        }
                    }
                }
            }
            assert!(found, "{out:?} is no shift or mirror of the image");
        }
        assert_eq!(seen.len(), 18, "every shift, flipped and not");
    }

    /// The same stream gives the same batch whatever the thread count; a
    /// flip alone keeps every pixel.
    #[test]
    fn reproducible_across_thread_counts() {
        let a = Augment { crop_padding: 2, hflip: true };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut x = Tensor::from_vec(&[64, 2, 8, 8], (0..64 * 128).map(|v| v as f32).collect()).unwrap();
            pool.install(|| a.apply(&mut x, &mut crate::rng::seeded(5)));
            x.data().to_vec()
        };
        assert_eq!(run(1), run(3));
        let mut x = image(1);
        Augment { crop_padding: 0, hflip: true }.apply(&mut x, &mut crate::rng::seeded(0));
        let mut v = x.data().to_vec();
        v.sort_by(f32::total_cmp);
        assert_eq!(v, (1..=9).map(|v| v as f32).collect::<Vec<_>>());
        assert!(Augment { crop_padding: 3, hflip: false }
            .validate(3, 3)
            .unwrap_err()
            .to_string()
            .contains("--crop-padding"));
    }
}
