//! Convolutions at batch 128 (or $BATCH): forward, and backward with and without the
//! input gradient (a profiling aid). With no arguments, LeNet's two layers;
//! else `cin,cout,size,kernel,padding[,stride]` per argument, e.g.
//! `cargo run --release -p normlab-dev --example conv_layer_parts -- 16,32,14,3,1 16,32,32,3,1,2`.
use std::time::Instant;

use normlab::layers::{Conv2d, Layer, Mode};
use normlab::{rng, Tensor};

fn main() {
    const USAGE: &str = "cin,cout,size,kernel,padding[,stride]";
    let args: Vec<[usize; 6]> = std::env::args()
        .skip(1)
        .map(|a| {
            let mut v: Vec<usize> = a.split(',').map(|s| s.parse().expect(USAGE)).collect();
            if v.len() == 5 {
                v.push(1);
            }
            v.try_into().expect(USAGE)
        })
        .collect();
    let layers = if args.is_empty() { vec![[1, 6, 28, 5, 0, 1], [6, 16, 12, 5, 0, 1]] } else { args };
    rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
        for [cin, cout, h, k, pad, stride] in layers {
            println!("{cin}->{cout} {h}x{h}, {k}x{k}, padding {pad}, stride {stride}");
            layer(cin, cout, h, k, pad, stride);
        }
    });
}

fn layer(cin: usize, cout: usize, h: usize, k: usize, pad: usize, stride: usize) {
    let n: usize = std::env::var("BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let ho = (h + 2 * pad - k) / stride + 1;
    let mut conv = Conv2d::<f32>::new(cout, k).padding(pad).stride(stride);
    conv.build(&[cin, h, h], &mut rng::seeded(0)).unwrap();
    let x = Tensor::from_vec(&[n, cin, h, h], (0..n * cin * h * h).map(|i| (i % 13) as f32 * 0.1).collect()).unwrap();
    let dy =
        Tensor::from_vec(&[n, cout, ho, ho], (0..n * cout * ho * ho).map(|i| (i % 5) as f32 * 0.1).collect()).unwrap();
    conv.forward(&x, Mode::Train).unwrap();
    let reps = 200;
    for need_dx in [false, true, false, true] {
        let t = Instant::now();
        for _ in 0..reps {
            conv.backward(&x, &dy, need_dx).unwrap();
        }
        println!("backward need_dx={need_dx}: {:.3} ms", t.elapsed().as_secs_f64() / reps as f64 * 1e3);
    }
    let t = Instant::now();
    for _ in 0..reps {
        conv.forward(&x, Mode::Train).unwrap();
    }
    println!("forward: {:.3} ms", t.elapsed().as_secs_f64() / reps as f64 * 1e3);
}
