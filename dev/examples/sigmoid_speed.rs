//! Sigmoid over 442,368 values (BNLeNet's first activation), one thread.
use std::time::Instant;
fn main() {
    let x: Vec<f32> = (0..442_368).map(|i| ((i % 1000) as f32 - 500.0) / 100.0).collect();
    let mut y = vec![0.0f32; x.len()];
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..100 {
            for (o, &v) in y.iter_mut().zip(&x) {
                *o = 1.0 / (1.0 + normlab::real::exp_f32(-v));
            }
        }
        let fast = t.elapsed().as_secs_f64() / 100.0;
        let t = Instant::now();
        for _ in 0..100 {
            for (o, &v) in y.iter_mut().zip(&x) {
                *o = 1.0 / (1.0 + (-v).exp());
            }
        }
        let libm = t.elapsed().as_secs_f64() / 100.0;
        println!("exp_f32: {:.3} ms, libm exp: {:.3} ms ({})", fast * 1e3, libm * 1e3, y[7]);
    }
}
