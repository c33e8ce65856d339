//! Turning stored images into a batch tensor.

use rayon::prelude::*;

use crate::data::Split;
use crate::tensor::Tensor;

/// Converts images (bytes 0..255) to a `(N, channels, rows, cols)` batch in [0, 1].
pub fn fill_batch(split: &Split, indices: &[usize], x: &mut Tensor<f32>, labels: &mut Vec<usize>) {
    let size = split.image_len();
    x.resize(&[indices.len(), split.channels, split.rows, split.cols]);
    labels.clear();
    labels.extend(indices.iter().map(|&i| split.labels[i] as usize));
    // Images are read in random order, each from a different page, which the
    // training step in between has pushed out of every cache: read one by
    // one, each waited on memory (0.08 ms per batch of 128). Each task first
    // asks for all of its images at once, so the waits overlap.
    const IMAGES_PER_TASK: usize = 16;
    x.data_mut().par_chunks_mut(size * IMAGES_PER_TASK).zip(indices.par_chunks(IMAGES_PER_TASK)).for_each(
        |(dst, images)| {
            for &i in images {
                crate::kernels::prefetch(split.image(i));
            }
            for (dst, &i) in dst.chunks_exact_mut(size).zip(images) {
                for (d, &p) in dst.iter_mut().zip(split.image(i)) {
                    *d = p as f32 * (1.0 / 255.0);
                }
            }
        },
    );
}
