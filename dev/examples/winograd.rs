//! The Winograd F(2x2,3x3) convolution (`kernels::winograd`) against the
//! channel-vector direct one (`kernels::conv_channels`), forward and input
//! gradient, one image, one thread, at the level `NORMLAB_ISA` allows, on
//! the suite's 3x3 stride-1 shapes. Alternates them, prints the median µs
//! of each (the thread's CPU time), the direct convolution's GFLOP/s
//! (`2·Cout·Cin·9·Ho·Wo` per call, so Winograd's figure is an effective
//! rate) and the ratio.
//!
//! `cargo run --release -p normlab-dev --example winograd` (`ONLY=32,32,28`:
//! that shape alone).

use normlab::kernels::conv::ConvGeometry;
use normlab::kernels::{conv_channels, winograd};
use normlab_dev::{kernels_run, median, time, SUITE_3X3};

fn main() {
    if !kernels_run() {
        return;
    }
    println!("shape (cin, cout, HxW) | fwd direct µs (GF/s) | fwd winograd µs (GF/s) | ratio | dx direct | dx winograd | ratio");
    let only = std::env::var("ONLY").ok();
    for &(cin, cout, hw) in SUITE_3X3 {
        if only.as_ref().is_some_and(|o| *o != format!("{cin},{cout},{hw}")) {
            continue;
        }
        let g = ConvGeometry { channels: cin, height: hw, width: hw, kernel: 3, stride: 1, padding: 1 };
        let (ho, wo) = g.output_hw().unwrap();
        let p = ho * wo;
        let x: Vec<f32> = (0..cin * hw * hw).map(|i| (i % 17) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..cout * g.col_rows()).map(|i| (i % 13) as f32 * 0.01).collect();
        let dy: Vec<f32> = (0..cout * p).map(|i| (i % 11) as f32 * 0.1).collect();
        let mut y = vec![0.0f32; cout * p];
        let mut dx = vec![0.0f32; cin * hw * hw];
        let reps = (2e8 / (2.0 * (cout * p * g.col_rows()) as f64)).max(3.0) as usize;
        let direct = conv_channels::Plan::forward(&g, cout);
        let (mut pd, mut pw) = (Vec::new(), Vec::new());
        direct.pack_weights(&w, &mut pd);
        let wino = winograd::Plan::forward(&g, cout);
        wino.pack_weights(&w, &mut pw);
        let direct_back = conv_channels::Plan::input_grad(&g, cout).unwrap();
        let wino_back = winograd::Plan::input_grad(&g, cout);
        let (mut pdb, mut pwb) = (Vec::new(), Vec::new());
        direct_back.pack_flipped_weights(&w, &mut pdb);
        wino_back.pack_flipped_weights(&w, &mut pwb);
        let mut xp =
            vec![
                0.0f32;
                direct.padded_len().max(wino.padded_len()).max(direct_back.padded_len()).max(wino_back.padded_len())
            ];
        let mut scratch = vec![0.0f32; wino.scratch_len().max(wino_back.scratch_len())];
        let backward = cin >= 8
            && winograd::input_grad_applies::<f32>(&g, cout)
            && conv_channels::input_grad_applies::<f32>(&g, cout);
        let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..7 {
            t[0].push(time(reps, || {
                direct.pad_input(&x, &mut xp);
                direct.run(&pd, None, &xp, &mut y);
            }));
            t[1].push(time(reps, || {
                wino.pad_input(&x, &mut xp);
                wino.run(&pw, None, &xp, &mut y, &mut scratch);
            }));
            if backward {
                t[2].push(time(reps, || {
                    direct_back.pad_input(&dy, &mut xp);
                    direct_back.run(&pdb, None, &xp, &mut dx);
                }));
                t[3].push(time(reps, || {
                    wino_back.pad_input(&dy, &mut xp);
                    wino_back.run(&pwb, None, &xp, &mut dx, &mut scratch);
                }));
            }
        }
        let m: Vec<f64> = t.into_iter().map(|v| if v.is_empty() { f64::NAN } else { median(v) }).collect();
        let gflops = |us: f64| 2.0 * (cout * p * g.col_rows()) as f64 / us / 1e3;
        println!(
            "({cin}, {cout}, {hw}x{hw}) | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.2}x | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.2}x",
            m[0], gflops(m[0]), m[1], gflops(m[1]), m[0] / m[1], m[2], gflops(m[2]), m[3], gflops(m[3]), m[2] / m[3]
        );
    }
}
