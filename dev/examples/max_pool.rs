//! MaxPool2d(2, 2) forward at vgg-bn's sizes: the layer (its 2x2 stride-2
//! kernel, compiled per instruction set) against the general window loop it
//! replaced for that case, written out here as it was (one plane at a time,
//! planes in parallel). A profiling aid.
use std::time::Instant;

use normlab::layers::{Layer, MaxPool2d, Mode};
use normlab::{rng, Tensor};
use rayon::prelude::*;

fn time(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..30)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2] * 1e3
}

/// The general loop: every window scanned row by row, a NaN winning.
fn general(x: &[f32], (h, w): (usize, usize), y: &mut [f32], arg: &mut [u32]) {
    let (ho, wo, k, s) = (h / 2, w / 2, 2, 2);
    y.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo)).zip(x.par_chunks(h * w)).for_each(
        |((out, arg), plane)| {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut best = (oh * s) * w + ow * s;
                    for i in 0..k {
                        for j in 0..k {
                            let idx = (oh * s + i) * w + ow * s + j;
                            if plane[idx] > plane[best] || plane[idx].is_nan() && !plane[best].is_nan() {
                                best = idx;
                            }
                        }
                    }
                    out[oh * wo + ow] = plane[best];
                    arg[oh * wo + ow] = best as u32;
                }
            }
        },
    );
}

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
        for (n, c, h) in [(128, 32, 28), (128, 64, 14), (128, 128, 7)] {
            let x = Tensor::from_vec(&[n, c, h, h], (0..n * c * h * h).map(|i| ((i * 7919) % 1000) as f32).collect())
                .unwrap();
            let mut pool = MaxPool2d::<f32>::new(2, 2);
            pool.build(&[c, h, h], &mut rng::seeded(0)).unwrap();
            let layer = time(|| {
                pool.forward(&x, Mode::Train).unwrap();
            });
            let (mut y, mut arg) = (vec![0f32; n * c * (h / 2) * (h / 2)], vec![0u32; n * c * (h / 2) * (h / 2)]);
            let loop_ms = time(|| general(x.data(), (h, h), &mut y, &mut arg));
            assert_eq!(&y[..], pool.output().data(), "the same values");
            println!("({n},{c},{h},{h}): layer {layer:.3} ms, general loop {loop_ms:.3} ms");
        }
    });
}
