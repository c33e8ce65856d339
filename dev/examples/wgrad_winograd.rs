//! The 3x3 weight gradient on padded planes (`kernels::conv_planes`)
//! against Winograd's (`kernels::winograd_grad`), one group of images as
//! `Conv2d` runs them (8, or 32 on planes narrower than 12), one thread, at
//! the level `NORMLAB_ISA` allows, on the suite's 3x3 shapes. Alternates
//! the two, prints the median µs of each (the thread's CPU time), the
//! direct GFLOP/s and the ratio.
//!
//! `cargo run --release -p normlab-dev --example wgrad_winograd`
//! (`ONLY=32,32,28`: that shape alone).

use normlab::kernels::conv::ConvGeometry;
use normlab::kernels::conv_planes::Plan;
use normlab::kernels::winograd_grad;
use normlab_dev::{kernels_run, median, time, SUITE_3X3};

fn main() {
    if !kernels_run() {
        return;
    }
    println!(
        "shape (cin, cout, HxW, k3 pad1), images | planes µs (GF/s) | winograd µs (GF/s direct-equivalent) | ratio"
    );
    let only = std::env::var("ONLY").ok();
    for &(cin, cout, hw) in SUITE_3X3 {
        if only.as_ref().is_some_and(|o| *o != format!("{cin},{cout},{hw}")) {
            continue;
        }
        let images = if hw < 12 { 32 } else { 8 };
        let g = ConvGeometry { channels: cin, height: hw, width: hw, kernel: 3, stride: 1, padding: 1 };
        let (ho, wo) = g.output_hw().unwrap();
        let p = ho * wo;
        let x: Vec<f32> = (0..images * cin * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..images * cout * p).map(|i| (i % 11) as f32 * 0.1).collect();
        let plan = Plan::forward(&g, cout);
        let (mut xps, mut dyws) = (vec![0.0f32; images * plan.padded_len()], vec![0.0f32; images * plan.wide_len()]);
        let wplan = winograd_grad::Plan::new(&g, cout);
        let mut scratch = vec![0.0f32; wplan.scratch_len()];
        let (mut dw, mut dw2) = (vec![0.0f32; cout * cin * 9], vec![0.0f32; cout * cin * 9]);
        let flop = 2.0 * (images * cout * p * g.col_rows()) as f64;
        let reps = (2e8 / flop).max(3.0) as usize;
        let mut t = [Vec::new(), Vec::new()];
        for _ in 0..7 {
            t[0].push(time(reps, || {
                for n in 0..images {
                    plan.pad_input(
                        &x[n * cin * hw * hw..][..cin * hw * hw],
                        &mut xps[n * plan.padded_len()..][..plan.padded_len()],
                    );
                    plan.widen_grad(
                        &dy[n * cout * p..][..cout * p],
                        &mut dyws[n * plan.wide_len()..][..plan.wide_len()],
                    );
                }
                plan.weight_grad(images, &xps, &dyws, &mut dw);
            }));
            t[1].push(time(reps, || wplan.weight_grad(images, &x, &dy, &mut scratch, &mut dw2)));
        }
        let diff = dw.iter().zip(&dw2).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = dw.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        let m: Vec<f64> = t.into_iter().map(median).collect();
        let gflops = |us: f64| flop / us / 1e3;
        println!(
            "({cin}, {cout}, {hw}x{hw}), {images} | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.2}x  (max diff {:.1e} of {:.1e})",
            m[0], gflops(m[0]), m[1], gflops(m[1]), m[0] / m[1], diff, scale
        );
    }
}
