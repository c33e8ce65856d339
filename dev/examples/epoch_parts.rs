//! Where an epoch's time goes outside the layers: batch filling, forward,
//! loss, backward, SGD (a profiling aid). Usage: epoch_parts [DATA_DIR]
//! (default: Debian's /usr/share/datasets/fashion-mnist).
use std::time::Instant;

use normlab::loss::CrossEntropy;
use normlab::models::{self, ModelKind};
use normlab::optim::{Sgd, SgdConfig};
use normlab::rng;
use normlab::train::fill_batch;
use normlab::Tensor;
use rand::seq::SliceRandom;

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(profile);
}

fn profile() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
    let data = normlab::data::load_dir(std::path::Path::new(&dir)).unwrap();
    let train = &data.train;
    let mut net = models::build::<f32>(ModelKind::BnLenet, &mut rng::seeded(0)).unwrap();
    let mut sgd = Sgd::new(SgdConfig::new(0.1)).unwrap();
    let mut ce = CrossEntropy::new();
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut r = rng::seeded(1);
    let mut t = [0.0f64; 5];
    for epoch in 0..3 {
        order.shuffle(&mut r);
        let start = Instant::now();
        for idx in order.chunks(128) {
            // as the trainer runs a step: the pool kept awake throughout
            let [s0, s1, s2, s3, s4, s5] = normlab::threads::keep_pool_awake(|| {
                let s0 = Instant::now();
                fill_batch(train, idx, &mut x, &mut labels);
                let s1 = Instant::now();
                let logits = net.forward(&x).unwrap();
                let s2 = Instant::now();
                ce.forward(logits, &labels).unwrap();
                let s3 = Instant::now();
                net.backward(&x, ce.grad()).unwrap();
                let s4 = Instant::now();
                sgd.step(&mut net);
                [s0, s1, s2, s3, s4, Instant::now()]
            });
            if epoch > 0 {
                for (k, (a, b)) in [(s0, s1), (s1, s2), (s2, s3), (s3, s4), (s4, s5)].into_iter().enumerate() {
                    t[k] += (b - a).as_secs_f64();
                }
            }
        }
        println!("epoch {epoch}: {:.3} s", start.elapsed().as_secs_f64());
    }
    for (name, v) in ["fill", "forward", "loss", "backward", "sgd"].iter().zip(t) {
        println!("{name:>9}: {:.3} ms per step", v / 2.0 / 469.0 * 1e3);
    }
}
