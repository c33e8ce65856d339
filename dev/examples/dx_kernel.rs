//! conv2's input and weight gradients alone, in cache, one thread (a profiling aid).
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
    println!("input grad: {:.3} us per image, {:.1} GFLOP/s ({})", s * 1e6, 16.0 * 64.0 * 150.0 * 2.0 / s / 1e9, dx[5]);
    weight_grad();
    conv1_weight_grad();
}

/// conv2's weight gradient alone on a group of 8 images in a loop.
fn weight_grad() {
    use normlab::kernels::conv_direct;
    let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
    let x: Vec<f32> = (0..8 * 864).map(|i| (i % 7) as f32 * 0.1).collect();
    let dy: Vec<f32> = (0..8 * 16 * 64).map(|i| (i % 5) as f32 * 0.1).collect();
    let (mut dy_t, mut dw) = (vec![0.0f32; 8 * 64 * 16], vec![0.0f32; 16 * 150]);
    let iters = 20_000;
    let t = Instant::now();
    for _ in 0..iters {
        conv_direct::weight_grad_by_channels(&g, 16, std::hint::black_box(&x), &dy, &mut dy_t, &mut dw);
    }
    let s = t.elapsed().as_secs_f64() / iters as f64 / 8.0;
    println!("weight grad: {:.3} us per image, {:.1} GFLOP/s", s * 1e6, 16.0 * 64.0 * 150.0 * 2.0 / s / 1e9);
}

/// conv1's weight gradient alone on a group of 8 images in a loop.
fn conv1_weight_grad() {
    use normlab::kernels::conv_direct;
    let g = ConvGeometry { channels: 1, height: 28, width: 28, kernel: 5, stride: 1, padding: 0 };
    let x: Vec<f32> = (0..8 * 784).map(|i| (i % 7) as f32 * 0.1).collect();
    let dy: Vec<f32> = (0..8 * 6 * 576).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut dw = vec![0.0f32; 6 * 25];
    let iters = 20_000;
    let t = Instant::now();
    for _ in 0..iters {
        dw.fill(0.0);
        conv_direct::weight_grad(&g, 6, std::hint::black_box(&x), &dy, &mut dw);
    }
    let s = t.elapsed().as_secs_f64() / iters as f64 / 8.0;
    println!("conv1 weight grad: {:.3} us per image, {:.1} GFLOP/s", s * 1e6, 6.0 * 576.0 * 25.0 * 2.0 / s / 1e9);
}
