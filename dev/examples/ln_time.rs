//! LayerNorm forward and backward at (ROWS, 768), ROWS from the first
//! argument (default 4096), for profiling.
use normlab::layers::{Layer, LayerNorm, Mode};
use normlab::{rng, Tensor};
fn main() {
    let rows: usize = std::env::args().nth(1).map_or(4096, |a| a.parse().expect("rows"));
    let x = Tensor::from_vec(&[rows, 768], (0..rows * 768).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect())
        .unwrap();
    let mut ln = LayerNorm::<f32>::trailing(1);
    ln.build(&[768], &mut rng::seeded(0)).unwrap();
    let dy = x.clone();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for _ in 0..20 {
            ln.forward(&x, Mode::Train).unwrap();
        }
        let f = t.elapsed().as_secs_f64() / 20.0;
        let t = std::time::Instant::now();
        for _ in 0..20 {
            ln.backward(&x, &dy, true).unwrap();
        }
        let b = t.elapsed().as_secs_f64() / 20.0;
        println!("forward {:.3} ms, backward {:.3} ms", f * 1e3, b * 1e3);
    }
}
