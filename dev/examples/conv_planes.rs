//! The padded-plane direct convolution (`kernels::conv_planes`) against
//! im2col + matrix product, forward and input gradient, one image, one
//! thread, at the level `NORMLAB_ISA` allows, on the suite's 3x3 padded shapes. Alternates the two, prints the
//! median µs of each (the thread's CPU time) and the ratio.
//!
//! `cargo run --release -p normlab-dev --example conv_planes`

use normlab::kernels::conv::{col2im, im2col, ConvGeometry};
use normlab::kernels::conv_planes::Plan;
use normlab::kernels::gemm::{gemm, Product};
use normlab_dev::{kernels_run, median, time, SUITE_3X3};

fn main() {
    if !kernels_run() {
        return;
    }
    println!("shape (cin, cout, HxW, k3 pad1) | fwd im2col+gemm µs | fwd planes µs | ratio | dx gemm+col2im µs | dx planes µs | ratio");
    for &(cin, cout, hw) in SUITE_3X3 {
        let g = ConvGeometry { channels: cin, height: hw, width: hw, kernel: 3, stride: 1, padding: 1 };
        let (ho, wo) = g.output_hw().unwrap();
        let p = ho * wo;
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..cout * g.col_rows()).map(|i| (i % 13) as f32 * 0.01).collect();
        let dy: Vec<f32> = (0..cout * p).map(|i| (i % 11) as f32 * 0.1).collect();
        let mut col = vec![0.0f32; g.col_rows() * p];
        let mut y = vec![0.0f32; cout * p];
        let mut dx = vec![0.0f32; cin * hw * hw];
        let fwd = Plan::forward(&g, cout);
        let back = Plan::input_grad(&g, cout).unwrap();
        let (mut pf, mut pb) = (Vec::new(), Vec::new());
        fwd.pack_weights(&w, &mut pf);
        back.pack_flipped_weights(&w, &mut pb);
        let (mut xp, mut dyp) = (vec![0.0f32; fwd.padded_len()], vec![0.0f32; back.padded_len()]);
        let reps = (2e8 / (2.0 * (cout * p * g.col_rows()) as f64)).max(3.0) as usize;
        let mut rows = Vec::new();
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..7 {
            t[0].push(time(reps, || {
                im2col(&g, &x, &mut col);
                gemm(Product::nn(cout, p, g.col_rows()), 1.0, &w, &col, 0.0, &mut y);
            }));
            t[1].push(time(reps, || {
                fwd.pad_input(&x, &mut xp);
                fwd.run(&pf, None, &xp, &mut y, &mut rows);
            }));
            t[2].push(time(reps, || {
                gemm(Product::tn(g.col_rows(), p, cout), 1.0, &w, &dy, 0.0, &mut col);
                col2im(&g, &col, &mut dx);
            }));
            t[3].push(time(reps, || {
                back.pad_input(&dy, &mut dyp);
                back.run(&pb, None, &dyp, &mut dx, &mut rows);
            }));
        }
        let m: Vec<f64> = t.into_iter().map(median).collect();
        let gflops = |us: f64| 2.0 * (cout * p * g.col_rows()) as f64 / us / 1e3;
        println!(
            "({cin}, {cout}, {hw}x{hw}) | {:.1} ({:.0} GF/s) | {:.1} ({:.0} GF/s) | {:.2}x | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.2}x",
            m[0], gflops(m[0]), m[1], gflops(m[1]), m[0] / m[1], m[2], gflops(m[2]), m[3], gflops(m[3]), m[2] / m[3]
        );
    }
}
