//! fill_batch alone: the same batch again and again, and a new random batch
//! each time (a profiling aid). Usage: fill_time [DATA_DIR] (default: Debian's
//! /usr/share/datasets/fashion-mnist).
use std::time::Instant;

use normlab::rng;
use normlab::train::fill_batch;
use normlab::Tensor;
use rand::seq::SliceRandom;

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(|| {
        let dir = std::env::args().nth(1).unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
        let data = normlab::data::load_dir(std::path::Path::new(&dir)).unwrap();
        let train = &data.train;
        let (mut x, mut labels) = (Tensor::default(), Vec::new());
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rng::seeded(1));
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..469 {
                fill_batch(train, &order[..128], &mut x, &mut labels);
            }
            let same = t.elapsed().as_secs_f64() / 469.0;
            let t = Instant::now();
            for idx in order.chunks(128) {
                fill_batch(train, idx, &mut x, &mut labels);
            }
            let fresh = t.elapsed().as_secs_f64() / 469.0;
            println!("same batch {:.1} us, new batches {:.1} us", same * 1e6, fresh * 1e6);
        }
    });
}
