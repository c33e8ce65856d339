//! Direct vs im2col+gemm convolution kernels, one thread, interleaved (a profiling aid).
use std::time::Instant;

use normlab::kernels::conv::{im2col, ConvGeometry};
use normlab::kernels::conv_direct;
use normlab::kernels::gemm::{gemm, Product};

fn main() {
    for (cin, cout, h) in [(1usize, 6usize, 28usize), (6, 16, 12)] {
        let g = ConvGeometry { channels: cin, height: h, width: h, kernel: 5, stride: 1, padding: 0 };
        let (ho, wo) = g.output_hw().unwrap();
        let (kd, p) = (g.col_rows(), ho * wo);
        let x: Vec<f32> = (0..cin * h * h).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..cout * kd).map(|i| (i % 7) as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..cout * p).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut col = vec![0.0f32; kd * p];
        let mut y = vec![0.0f32; cout * p];
        let mut dw = vec![0.0f32; cout * kd];
        let mut packed = conv_direct::PackedWeights::default();
        let reps = 2000;
        let (mut t_gemm, mut t_direct, mut t_gw, mut t_dw) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                im2col(&g, &x, &mut col);
                gemm(Product::nn(cout, p, kd), 1.0, &w, &col, 0.0, &mut y);
            }
            t_gemm += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..reps {
                conv_direct::pack_weights(&w, cout, cin, 5, &mut packed);
                conv_direct::forward(&g, cout, &packed, None, &x, &mut y);
            }
            t_direct += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..reps {
                gemm(Product::nt(cout, kd, p), 1.0, &dy, &col, 1.0, &mut dw);
            }
            t_gw += t.elapsed().as_secs_f64();
            let (x8, dy8) = (x.repeat(8), dy.repeat(8));
            let t = Instant::now();
            for _ in 0..reps / 8 {
                conv_direct::weight_grad(&g, cout, &x8, &dy8, &mut dw);
            }
            t_dw += t.elapsed().as_secs_f64();
        }
        let flop = 2.0 * (cout * kd * p) as f64 * reps as f64 * 5.0;
        println!(
            "{cin}->{cout} {h}x{h}: fwd im2col+gemm {:.1} GFLOP/s, direct {:.1}; dW gemm {:.1}, direct {:.1}",
            flop / t_gemm / 1e9,
            flop / t_direct / 1e9,
            flop / t_gw / 1e9,
            flop / t_dw / 1e9
        );
    }
}
