//! conv2's input gradient alone on one image in a loop (a profiling aid).
use std::time::Instant;

use normlab::kernels::conv::ConvGeometry;
use normlab::kernels::conv_input_grad;

fn main() {
    let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
    let w: Vec<f32> = (0..16 * 150).map(|i| (i % 7) as f32 * 0.1).collect();
    let dy: Vec<f32> = (0..16 * 64).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut dx = vec![0.0f32; 864];
    let mut packed = Vec::new();
    conv_input_grad::pack_weights(&w, 16, 6, &mut packed);
    let iters = 200_000;
    let t = Instant::now();
    for _ in 0..iters {
        conv_input_grad::input_grad(&g, 16, &packed, std::hint::black_box(&dy), &mut dx);
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!("{:.3} us per image, {:.1} GFLOP/s ({})", s * 1e6, 16.0 * 64.0 * 150.0 * 2.0 / s / 1e9, dx[5]);
}
