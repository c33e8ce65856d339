//! The channel-vector direct convolution (`kernels::conv_channels`)
//! against the padded-plane one (`kernels::conv_planes`, stride 1) or
//! im2col + matrix product (stride 2), forward and input gradient, one
//! image, one thread, at the level `NORMLAB_ISA` allows, on the suite's
//! shapes. Alternates them, prints the median µs of each (the thread's CPU
//! time), GFLOP/s and the ratio.
//!
//! `cargo run --release -p normlab-dev --example conv_channels`

use normlab::kernels::conv::{im2col, ConvGeometry};
use normlab::kernels::conv_channels;
use normlab::kernels::conv_planes;
use normlab::kernels::gemm::{gemm, Product};
use normlab_dev::{median, time};

fn main() {
    if !normlab::isa::avx2() {
        println!("no AVX2 here (or NORMLAB_ISA=portable): the direct kernels do not run");
        return;
    }
    println!("kernels at {}", normlab::isa::active());
    println!("shape (cin, cout, HxW, k, stride) | fwd old µs (GF/s) | fwd channels µs (GF/s) | ratio | dx old | dx channels | ratio");
    for &(cin, cout, hw, k, stride) in &[
        (32, 32, 28, 3, 1),
        (32, 64, 14, 3, 1),
        (64, 64, 14, 3, 1),
        (64, 128, 7, 3, 1),
        (128, 128, 7, 3, 1),
        (3, 16, 32, 3, 1),
        (16, 16, 32, 3, 1),
        (32, 32, 16, 3, 1),
        (64, 64, 8, 3, 1),
        (16, 32, 32, 3, 2),
        (16, 32, 32, 1, 2),
        (32, 64, 16, 3, 2),
        (32, 64, 16, 1, 2),
        (16, 32, 14, 3, 1),
        (32, 64, 7, 3, 1),
        (64, 64, 4, 3, 1),
    ] {
        let g = ConvGeometry { channels: cin, height: hw, width: hw, kernel: k, stride, padding: k / 2 };
        let (ho, wo) = g.output_hw().unwrap();
        let p = ho * wo;
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..cout * g.col_rows()).map(|i| (i % 13) as f32 * 0.01).collect();
        let dy: Vec<f32> = (0..cout * p).map(|i| (i % 11) as f32 * 0.1).collect();
        let mut col = vec![0.0f32; g.col_rows() * p];
        let mut y = vec![0.0f32; cout * p];
        let mut dx = vec![0.0f32; cin * hw * hw];
        let reps = (2e8 / (2.0 * (cout * p * g.col_rows()) as f64)).max(3.0) as usize;
        let fwd = conv_channels::Plan::forward(&g, cout);
        let mut pf = Vec::new();
        fwd.pack_weights(&w, &mut pf);
        let mut xp = vec![0.0f32; fwd.padded_len()];
        let planes = (stride == 1).then(|| {
            let plan = conv_planes::Plan::forward(&g, cout);
            let mut packed = Vec::new();
            plan.pack_weights(&w, &mut packed);
            let back = conv_planes::Plan::input_grad(&g, cout).unwrap();
            let mut packed_back = Vec::new();
            back.pack_flipped_weights(&w, &mut packed_back);
            (plan, packed, back, packed_back)
        });
        let back = conv_channels::Plan::input_grad(&g, cout);
        let mut pb = Vec::new();
        if let Some(back) = &back {
            back.pack_flipped_weights(&w, &mut pb);
        }
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut rows = Vec::new();
        let mut scratch = vec![0.0f32; 4 * (cin.max(cout) * (hw + 8) * (hw + 8)) + 4096];
        for _ in 0..7 {
            t[0].push(time(reps, || match &planes {
                Some((plan, packed, _, _)) => {
                    plan.pad_input(&x, &mut scratch[..plan.padded_len()]);
                    plan.run(packed, None, &scratch[..plan.padded_len()], &mut y, &mut rows);
                }
                None => {
                    im2col(&g, &x, &mut col);
                    gemm(Product::nn(cout, p, g.col_rows()), 1.0, &w, &col, 0.0, &mut y);
                }
            }));
            t[1].push(time(reps, || {
                fwd.pad_input(&x, &mut xp);
                fwd.run(&pf, None, &xp, &mut y);
            }));
            if let (Some((_, _, pback, ppacked)), Some(back)) = (&planes, &back) {
                t[2].push(time(reps, || {
                    pback.pad_input(&dy, &mut scratch[..pback.padded_len()]);
                    pback.run(ppacked, None, &scratch[..pback.padded_len()], &mut dx, &mut rows);
                }));
                t[3].push(time(reps, || {
                    back.pad_input(&dy, &mut scratch[..back.padded_len()]);
                    back.run(&pb, None, &scratch[..back.padded_len()], &mut dx);
                }));
            }
        }
        let m: Vec<f64> = t.into_iter().map(|v| if v.is_empty() { f64::NAN } else { median(v) }).collect();
        let gflops = |us: f64| 2.0 * (cout * p * g.col_rows()) as f64 / us / 1e3;
        println!(
            "({cin}, {cout}, {hw}x{hw}, k{k}, s{stride}) | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.2}x | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.2}x",
            m[0], gflops(m[0]), m[1], gflops(m[1]), m[0] / m[1], m[2], gflops(m[2]), m[3], gflops(m[3]), m[2] / m[3]
        );
    }
}
