//! conv2's weight gradient on one 8-image group in cache, one thread: the
//! transposition and the 16-lane kernel apart (a profiling aid).
use std::time::Instant;

use normlab::kernels::conv::ConvGeometry;
use normlab::kernels::conv_direct;

fn main() {
    let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
    let (cout, images, p) = (16usize, 8usize, 64usize);
    let x: Vec<f32> = (0..images * 6 * 144).map(|i| (i % 13) as f32 * 0.1).collect();
    let dy: Vec<f32> = (0..images * cout * p).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut dy_t = vec![0.0f32; images * p * 16];
    let mut dw = vec![0.0f32; cout * 150];
    let reps = 20000;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            conv_direct::weight_grad_by_channels(&g, cout, &x, &dy, &mut dy_t, &mut dw);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let flop = 2.0 * (cout * 150 * p * images) as f64;
        println!("weight_grad_by_channels, 8 images: {:.2} us, {:.1} GFLOP/s", s * 1e6, flop / s / 1e9);
        let t = Instant::now();
        for _ in 0..reps {
            conv_direct::wide::weight_grad_16(&g, cout, &x, &dy_t, &mut dw);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("  kernel alone: {:.2} us, {:.1} GFLOP/s", s * 1e6, flop / s / 1e9);
        // the whole batch, group after group, as one thread of the layer sees it
        let (xb, dyb) = (x.repeat(16), dy.repeat(16));
        let t = Instant::now();
        for _ in 0..reps / 16 {
            for (xg, dyg) in xb.chunks_exact(x.len()).zip(dyb.chunks_exact(dy.len())) {
                conv_direct::weight_grad_by_channels(&g, cout, xg, dyg, &mut dy_t, &mut dw);
            }
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("  128 images, per group: {:.2} us", s * 1e6);
    }
}
