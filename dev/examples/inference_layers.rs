//! Per-layer eval-mode forward time of a suite network (default resnet-bn),
//! with batch norm folded as `normlab bench --inference` folds it:
//! `cargo run --release -p normlab-dev --example inference_layers -- resnet-bn 256`.
//! With one thread (RAYON_NUM_THREADS=1) it counts the thread's CPU time.
//! `UNFOLDED=1` keeps batch norm (fused with its neighbours, as the
//! unfolded row of the benchmark). `CHUNKS=256,16,8` then also times the whole batch through the network
//! in chunks of those sizes (wall time) and says whether the outputs are
//! bitwise the one-pass ones (`Sequential::predict` picks its own size).
use std::time::Instant;

use normlab::layers::Mode;
use normlab::threads::keep_pool_awake;
use normlab::{rng, Tensor};
use normlab_cli::bench::suite;
use normlab_dev::probe_clock as now;

fn main() {
    rayon::ThreadPoolBuilder::new().build().unwrap().install(profile);
}

fn profile() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "resnet-bn".into());
    let batch: usize = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(256);
    let iters: usize = std::env::var("ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let (plain, _, input, _) = suite::network(&name).unwrap();
    let mut net = plain.fusion(false);
    net.build(&input, &mut rng::seeded(0)).unwrap();
    net.eval();
    if std::env::var_os("UNFOLDED").is_none() {
        net.fold_batch_norms().unwrap();
    }
    net.fuse().unwrap();
    let mut shape = vec![batch];
    shape.extend(&input);
    let len: usize = shape.iter().product();
    let x = Tensor::from_vec(&shape, (0..len).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect()).unwrap();
    let n = net.len();
    let mut fwd = vec![0.0; n];
    for it in 0..iters + 3 {
        keep_pool_awake(|| {
            let layers = net.layers_mut();
            for i in 0..n {
                let (done, rest) = layers.split_at_mut(i);
                let input = if i == 0 { &x } else { done[i - 1].output() };
                let t = now();
                rest[0].forward(input, Mode::Eval).unwrap();
                if it >= 3 {
                    fwd[i] += now() - t;
                }
            }
        });
    }
    let mut total = 0.0;
    for (i, l) in net.layers().iter().enumerate() {
        let f = fwd[i] / iters as f64 * 1e3;
        total += f;
        println!("{i:>2} {:<40} {f:8.3} ms", l.kind());
    }
    println!("total {total:.3} ms per batch of {batch}");
    if let Ok(chunks) = std::env::var("CHUNKS") {
        let (_, full) = chunked(&mut net, &x, batch, 3);
        for c in chunks.split(',').map(|c| c.parse::<usize>().unwrap()) {
            let (t, out) = chunked(&mut net, &x, c, iters);
            let same = out.iter().zip(&full).all(|(a, b)| a.to_bits() == b.to_bits());
            println!("chunks of {c:>3}: {:8.3} ms (wall), bitwise the full batch: {same}", t * 1e3);
        }
    }
}

/// The whole batch through the network in chunks of `chunk` images:
/// seconds per batch (median of `iters`) and the outputs.
pub fn chunked(
    net: &mut normlab::models::Sequential<f32>,
    x: &Tensor<f32>,
    chunk: usize,
    iters: usize,
) -> (f64, Vec<f32>) {
    let batch = x.shape()[0];
    let per: usize = x.shape()[1..].iter().product();
    let mut times = Vec::new();
    let mut out = Vec::new();
    for _ in 0..iters + 2 {
        out.clear();
        let t = Instant::now();
        keep_pool_awake(|| {
            for c0 in (0..batch).step_by(chunk) {
                let n = chunk.min(batch - c0);
                let mut shape = x.shape().to_vec();
                shape[0] = n;
                let xc = Tensor::from_vec(&shape, x.data()[c0 * per..(c0 + n) * per].to_vec()).unwrap();
                out.extend_from_slice(net.forward(&xc).unwrap().data());
            }
        });
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], out)
}
