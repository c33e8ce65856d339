//! The machine's own limits, measured in the same run as the kernels so
//! every figure can be read as a fraction of what the hardware does:
//! peak fused multiply-add throughput and STREAM-style triad bandwidth.

use rayon::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// f32 GFLOP/s of independent FMA chains on every thread.
    pub fma_gflops: f64,
    /// GB/s of `a[i] = b[i] + s·c[i]` over arrays much larger than the caches.
    pub triad_gbs: f64,
    pub threads: usize,
    pub vector_isa: &'static str,
}

const CHAINS: usize = 12;

/// Runs `iters` rounds of `CHAINS` independent FMA chains on 16-wide
/// vectors; returns a value so nothing is optimized away.
fn fma_loop_portable(iters: usize, seed: f32) -> f32 {
    let mut acc = [[seed; 16]; CHAINS];
    let (a, b) = ([0.999_999f32; 16], [1e-7f32; 16]);
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for l in 0..16 {
                // a multiply and an add: without FMA hardware a fused
                // multiply-add is a library call
                chain[l] = chain[l] * a[l] + b[l];
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
/// # Safety
/// The CPU must have AVX-512F.
unsafe fn fma_loop_avx512(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            *chain = _mm512_fmadd_ps(*chain, a, b);
        }
    }
    let mut total = 0.0;
    for chain in acc {
        total += _mm512_reduce_add_ps(chain);
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
/// # Safety
/// The CPU must have AVX2 and FMA.
unsafe fn fma_loop_avx2(iters: usize, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    // the same multiply-adds as above, as half the chains of two 8-lane
    // vectors each, twice per round: 12 sums in AVX2's 16 registers (24
    // spilled to the stack, and the "peak" came out at 51 GFLOP/s on a
    // Zen 4 whose AVX2 kernels ran at 110)
    let mut acc = [[_mm256_set1_ps(seed); 2]; CHAINS / 2];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..iters {
        for _ in 0..2 {
            for chain in acc.iter_mut() {
                chain[0] = _mm256_fmadd_ps(chain[0], a, b);
                chain[1] = _mm256_fmadd_ps(chain[1], a, b);
            }
        }
    }
    let mut total = 0.0;
    for chain in acc {
        let mut lanes = [0.0f32; 16];
        _mm256_storeu_ps(lanes.as_mut_ptr(), chain[0]);
        _mm256_storeu_ps(lanes[8..].as_mut_ptr(), chain[1]);
        total += lanes.iter().sum::<f32>();
    }
    total
}

/// The FMA loop of the instruction set the kernels use
/// ([`normlab::isa::active`]), and its name: the peak is that of the code
/// that runs, so a run capped with NORMLAB_ISA is measured against its own.
fn fma_loop(iters: usize, seed: f32) -> (f32, &'static str) {
    #[cfg(target_arch = "x86_64")]
    match normlab::isa::active() {
        // SAFETY: active() names no level the CPU lacks
        normlab::isa::Isa::Avx512 => return (unsafe { fma_loop_avx512(iters, seed) }, "avx512"),
        // SAFETY: as above
        normlab::isa::Isa::Avx2 => return (unsafe { fma_loop_avx2(iters, seed) }, "avx2"),
        normlab::isa::Isa::Portable => {}
    }
    (fma_loop_portable(iters, seed), "portable")
}

pub fn measure() -> Limits {
    let threads = rayon::current_num_threads();
    let iters = 20_000_000;
    let mut best_fma = 0.0f64;
    let mut isa = "";
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let results: Vec<(f32, &str)> = (0..threads).into_par_iter().map(|i| fma_loop(iters, i as f32)).collect();
        let secs = t.elapsed().as_secs_f64();
        isa = results[0].1;
        std::hint::black_box(&results);
        let flops = (threads * iters * CHAINS * 16 * 2) as f64;
        best_fma = best_fma.max(flops / secs / 1e9);
    }
    let n = 1 << 24; // 64 MiB per array
    let mut a = vec![0.0f32; n];
    let b = vec![1.0f32; n];
    let c = vec![2.0f32; n];
    let mut best_triad = 0.0f64;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        a.par_chunks_mut(1 << 16).zip(b.par_chunks(1 << 16).zip(c.par_chunks(1 << 16))).for_each(|(a, (b, c))| {
            for i in 0..a.len() {
                a[i] = b[i] + 3.0 * c[i];
            }
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&a);
        best_triad = best_triad.max((3 * 4 * n) as f64 / secs / 1e9);
    }
    Limits { fma_gflops: best_fma, triad_gbs: best_triad, threads, vector_isa: isa }
}
