//! LeNet's convolutions at batch 128: forward, and backward with and without
//! the input gradient (a profiling aid).
use std::time::Instant;

use normlab::layers::{Conv2d, Layer, Mode};
use normlab::{rng, Tensor};

fn main() {
    for (cin, cout, h) in [(1, 6, 28), (6, 16, 12)] {
        println!("{cin}->{cout} {h}x{h}");
        layer(cin, cout, h);
    }
}

fn layer(cin: usize, cout: usize, h: usize) {
    let ho = h - 4;
    let mut conv = Conv2d::<f32>::new(cout, 5);
    conv.build(&[cin, h, h], &mut rng::seeded(0)).unwrap();
    let x =
        Tensor::from_vec(&[128, cin, h, h], (0..128 * cin * h * h).map(|i| (i % 13) as f32 * 0.1).collect()).unwrap();
    let dy = Tensor::from_vec(&[128, cout, ho, ho], (0..128 * cout * ho * ho).map(|i| (i % 5) as f32 * 0.1).collect())
        .unwrap();
    conv.forward(&x, Mode::Train).unwrap();
    for need_dx in [false, true, false, true] {
        let t = Instant::now();
        for _ in 0..500 {
            conv.backward(&x, &dy, need_dx).unwrap();
        }
        println!("backward need_dx={need_dx}: {:.3} ms", t.elapsed().as_secs_f64() / 500.0 * 1e3);
    }
    let t = Instant::now();
    for _ in 0..500 {
        conv.forward(&x, Mode::Train).unwrap();
    }
    println!("forward: {:.3} ms", t.elapsed().as_secs_f64() / 500.0 * 1e3);
}
