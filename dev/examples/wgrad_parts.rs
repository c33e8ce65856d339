//! The weight gradient on padded planes (`kernels::conv_planes`), its
//! parts timed apart for one group of 8 images, one thread: padding the
//! inputs (with stride 2, splitting them into phase planes), widening the
//! output gradients, and the kernel. On resnet-bn's layers, strided and
//! not, at the level `NORMLAB_ISA` allows.
//!
//! `cargo run --release -p normlab-dev --example wgrad_parts`

use normlab::kernels::conv::ConvGeometry;
use normlab::kernels::conv_planes::Plan;
use normlab_dev::{kernels_run, median, time};

fn main() {
    if !kernels_run() {
        return;
    }
    println!("cin -> cout, HxW, kernel, stride | pad µs | widen µs | kernel µs (GF/s)");
    for (cin, cout, hw, k, stride) in [
        (16, 16, 32, 3, 1),
        (32, 32, 16, 3, 1),
        (16, 32, 32, 3, 2),
        (32, 64, 16, 3, 2),
        (16, 32, 32, 1, 2),
        (32, 64, 16, 1, 2),
    ] {
        let images = 8;
        let g = ConvGeometry { channels: cin, height: hw, width: hw, kernel: k, stride, padding: k / 2 };
        let (ho, wo) = g.output_hw().unwrap();
        let p = ho * wo;
        let x: Vec<f32> = (0..images * cin * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..images * cout * p).map(|i| (i % 11) as f32 * 0.1).collect();
        let plan = Plan::forward(&g, cout);
        let (padded, wide) = (plan.padded_len(), plan.wide_len());
        let (mut xps, mut dyws) = (vec![0.0f32; images * padded], vec![0.0f32; images * wide]);
        let mut dw = vec![0.0f32; cout * g.col_rows()];
        let flop = 2.0 * (images * cout * p * g.col_rows()) as f64;
        let reps = (1e8 / flop).max(3.0) as usize;
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        let image = cin * hw * hw;
        for _ in 0..7 {
            t[0].push(time(reps, || {
                for n in 0..images {
                    plan.pad_input(&x[n * image..][..image], &mut xps[n * padded..][..padded]);
                }
            }));
            t[1].push(time(reps, || {
                for n in 0..images {
                    plan.widen_grad(&dy[n * cout * p..][..cout * p], &mut dyws[n * wide..][..wide]);
                }
            }));
            t[2].push(time(reps, || plan.weight_grad(images, &xps, &dyws, &mut dw)));
        }
        let m: Vec<f64> = t.into_iter().map(median).collect();
        println!(
            "{cin} -> {cout}, {hw}x{hw}, {k}x{k}, {stride} | {:.1} | {:.1} | {:.1} ({:.0})",
            m[0],
            m[1],
            m[2],
            flop / m[2] / 1e3
        );
    }
}
