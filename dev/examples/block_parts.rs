//! The fused BN+sigmoid+pool block of BNLeNet at batch 128: its parts timed
//! one by one (a profiling aid).
use std::time::Instant;

use normlab::kernels::batch_norm::channel_stats;
use normlab::layers::{AvgPool2d, BatchNorm, BatchNormConfig, Mode, Sigmoid};
use normlab::models::Sequential;
use normlab::{rng, Tensor};

fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..100 {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / 100.0);
    }
    best * 1e3
}

fn main() {
    // on a pool thread, as `normlab` runs its commands
    rayon::ThreadPoolBuilder::new().build().unwrap().install(profile);
}

fn profile() {
    for (c, h) in [(6usize, 24usize), (16, 8)] {
        let n = 128;
        let z = Tensor::from_vec(
            &[n, c, h, h],
            (0..n * c * h * h).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect(),
        )
        .unwrap();
        let dy =
            Tensor::from_vec(&[n, c, h / 2, h / 2], (0..n * c * h * h / 4).map(|i| (i % 7) as f32 * 0.01).collect())
                .unwrap();
        // the model fuses the three layers into the block at build
        let mut net = Sequential::<f32>::new()
            .push(BatchNorm::new(BatchNormConfig::default()))
            .push(Sigmoid::new())
            .push(AvgPool2d::new(2, 2));
        net.build(&[c, h, h], &mut rng::seeded(0)).unwrap();
        let mut block = net.into_layers().remove(0);
        assert_eq!(block.kind(), "BatchNorm2d+Sigmoid+AvgPool2d");
        let stats = time(|| {
            std::hint::black_box(channel_stats(z.data(), normlab::kernels::stats::Ncs { n, c, s: h * h }));
        });
        let fwd = time(|| {
            block.forward(&z, Mode::Train).unwrap();
        });
        let bwd = time(|| {
            block.backward(&z, &dy, true).unwrap();
        });
        println!("({n},{c},{h},{h}): channel_stats {stats:.3} ms, forward {fwd:.3} ms, backward {bwd:.3} ms");
    }
}
