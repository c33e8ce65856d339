//! Tile shapes of the direct forward convolution at each level this CPU
//! has, one thread, GFLOP/s (a profiling aid for `conv_direct`'s
//! `tile_shape`): `cargo run --release -p normlab-dev --example conv_tiles`;
//! then conv2's weight-gradient and input-gradient parts by im2col.
use std::time::Instant;

use normlab::isa::{self, Isa};
use normlab::kernels::conv::{im2col, ConvGeometry};
use normlab::kernels::conv_direct as cd;
use normlab::kernels::gemm::{gemm, Product};

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn main() {
    tiles();
    backward_parts();
}

fn tiles() {
    for level in [Isa::Avx2, Isa::Avx512] {
        if isa::set_cap(level) != level {
            println!("skipped {level}: this CPU's best level is {}", isa::detected());
            continue;
        }
        println!("{level}:");
        for (cin, cout, h) in [(1usize, 6usize, 28usize), (6, 16, 12), (6, 16, 28), (16, 32, 14)] {
            let g = ConvGeometry { channels: cin, height: h, width: h, kernel: 5, stride: 1, padding: 0 };
            let (ho, wo) = g.output_hw().unwrap();
            let (kd, p) = (g.col_rows(), ho * wo);
            let x: Vec<f32> = (0..cin * h * h).map(|i| (i % 13) as f32 * 0.1).collect();
            let w: Vec<f32> = (0..cout * kd).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut y = vec![0.0f32; cout * p];
            let flop = 2.0 * (cout * kd * p) as f64;
            let reps = 2000;
            let mut packed = cd::PackedWeights::default();
            cd::pack_weights(&w, cout, cin, 5, &mut packed);
            let t = time(reps, || cd::forward(&g, cout, &packed, None, &x, &mut y));
            print!("  {cin}->{cout} {h}x{h}: chosen {:.0} |", flop / t / 1e9);
            let want = y.clone();
            let mut packed = Vec::new();
            macro_rules! combo {
                ($cb:literal, $r:literal) => {
                    if ho >= $r {
                        cd::pack_weights_blocked(&w, cout, cin, 5, $cb, &mut packed);
                        y.fill(0.0);
                        let t =
                            time(reps, || cd::forward_tiled::<f32, 5, $cb, $r>(&g, cout, &packed, None, &x, &mut y));
                        let same = y == want;
                        print!(" {}x{} {:.0}{}", $cb, $r, flop / t / 1e9, if same { "" } else { "!!" });
                    }
                };
            }
            combo!(8, 2);
            combo!(6, 3);
            combo!(6, 2);
            combo!(4, 4);
            combo!(4, 2);
            combo!(3, 3);
            println!();
        }
    }
}

fn backward_parts() {
    use normlab::kernels::conv::col2im;
    let g = ConvGeometry { channels: 6, height: 12, width: 12, kernel: 5, stride: 1, padding: 0 };
    let (kd, p, co) = (150, 64, 16);
    let w: Vec<f32> = (0..co * kd).map(|i| (i % 7) as f32 * 0.1).collect();
    let dy: Vec<f32> = (0..co * p).map(|i| (i % 5) as f32 * 0.1).collect();
    let x: Vec<f32> = (0..6 * 144).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut col = vec![0.0f32; kd * p];
    let mut dcol = vec![0.0f32; kd * p];
    let mut dx = vec![0.0f32; 6 * 144];
    let mut dw = vec![0.0f32; co * kd];
    im2col(&g, &x, &mut col);
    let flop = 2.0 * (co * kd * p) as f64;
    let t = time(3000, || gemm(Product::nt(co, kd, p), 1.0, &dy, &col, 1.0, &mut dw));
    print!("6->16 dW gemm {:.0} GFLOP/s ({:.2} us/image)", flop / t / 1e9, t * 1e6);
    let t = time(3000, || gemm(Product::tn(kd, p, co), 1.0, &w, &dy, 0.0, &mut dcol));
    print!("; dx gemm {:.0} ({:.2} us)", flop / t / 1e9, t * 1e6);
    let t = time(3000, || col2im(&g, &dcol, &mut dx));
    println!("; col2im {:.2} us", t * 1e6);
}
