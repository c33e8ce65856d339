//! Fused batch norm forward and backward timed separately, at LeNet's
//! second-block shape (a profiling aid). Usage: bn_parts [N C H W]
use std::time::Instant;

use normlab::layers::{BatchNorm, BatchNormConfig, BnImpl, Layer, Mode};
use normlab::{rng, Tensor};

fn main() {
    let dims: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let shape = if dims.len() == 4 { dims } else { vec![128, 16, 8, 8] };
    let numel: usize = shape.iter().product();
    let x = Tensor::from_vec(&shape, (0..numel).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()).unwrap();
    let dy = Tensor::from_vec(&shape, (0..numel).map(|i| (i % 7) as f32 * 0.01).collect()).unwrap();
    let mut bn = BatchNorm::<f32>::with_impl(BatchNormConfig::default(), BnImpl::Fused);
    bn.build(&shape[1..], &mut rng::seeded(0)).unwrap();
    for _ in 0..std::env::var("REPS").map_or(3, |v| v.parse().unwrap()) {
        let t = Instant::now();
        for _ in 0..std::env::var("ITERS").map_or(1000, |v| v.parse().unwrap()) {
            bn.forward(&x, Mode::Train).unwrap();
        }
        let f = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..std::env::var("ITERS").map_or(1000, |v| v.parse().unwrap()) {
            bn.backward(&x, &dy, true).unwrap();
        }
        let b = t.elapsed().as_secs_f64();
        println!("{shape:?}: forward {:.4} ms, backward {:.4} ms", f, b);
        kernel_only(&shape, &x, &dy);
    }
}

fn kernel_only(shape: &[usize], x: &Tensor<f32>, dy: &Tensor<f32>) {
    let ncs = normlab::kernels::stats::Ncs::of(shape);
    let c = ncs.c;
    let (mean, mean_lo) = (vec![0.1f32; c], vec![0.0f32; c]);
    let mut dx = vec![0.0f32; x.numel()];
    let t = Instant::now();
    for _ in 0..1000 {
        normlab::kernels::batch_norm::backward_fused(
            (x.data(), &normlab::kernels::batch_norm::Dense(dy.data())),
            &mut dx,
            ncs,
            normlab::kernels::batch_norm::TwoTerm { hi: &mean, lo: &mean_lo },
            normlab::kernels::batch_norm::Epilogue::none(),
            |_, a, b| (0.5, (b * 1e-6) as f32, (a * 1e-6) as f32),
        );
    }
    println!("kernel only: backward {:.4} ms", t.elapsed().as_secs_f64());
}
