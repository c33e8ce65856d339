//! Output sweeps with streaming stores, for tensors too large for the
//! caches: a normal store first reads the line it writes, a streaming
//! store writes the whole line without reading it. Each sweep here does the
//! same arithmetic in the same order as the plain loop it stands in for,
//! so the values are bitwise the same (tested in `batch_norm`).
//!
//! BN at (64,64,56,56) (51 MB per tensor), 2 threads, `normlab bench`:
//! forward 3.7-3.9 -> 2.7-2.8 ms, forward+backward 11.2-12.1 -> 7.6-7.8 ms
//! (73-74% -> 106-111% of the triad measured in the same run). Tried once before, when tensors started
//! on 16-byte boundaries and streaming stores straddled cache lines: slower
//! then (8 -> 12 ms).

use crate::isa::avx512;
use crate::real::Real;

/// Tensors from this size on (bytes) store their output streaming. Below
/// it a tensor can still come back from the VM's share of L3, and streaming
/// did not pay: LayerNorm at (4096,768), 12.6 MB, 2 threads, forward
/// 0.60-0.62 -> 0.63 ms; at (16384,768), 50 MB, forward 2.83-2.96 ->
/// 2.23-2.31 ms and backward 5.56-5.84 -> 4.85-5.22 ms (`dev/examples/ln_time.rs`).
pub const MIN_BYTES: usize = 32 << 20;

/// Whether a sweep over a tensor of `bytes` stores its output streaming:
/// f32 with AVX-512 active ([`crate::isa`]), tensors of [`MIN_BYTES`] or
/// more. Each sweep still falls back to the plain loop for an output run
/// that is not whole 64-byte-aligned vectors (it returns false).
pub fn applies<T: Real>(bytes: usize) -> bool {
    avx512() && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && bytes >= MIN_BYTES
}

/// Coefficient tuples as f32 (only called where [`applies`] checked that
/// `T` is f32).
pub trait MapF32 {
    type Out;
    fn map_f32(self) -> Self::Out;
}
impl<T: Real> MapF32 for (T, T, T) {
    type Out = (f32, f32, f32);
    fn map_f32(self) -> (f32, f32, f32) {
        (self.0.as_f64() as f32, self.1.as_f64() as f32, self.2.as_f64() as f32)
    }
}
impl<T: Real> MapF32 for (T, T, T, T) {
    type Out = (f32, f32, f32, f32);
    fn map_f32(self) -> (f32, f32, f32, f32) {
        (self.0.as_f64() as f32, self.1.as_f64() as f32, self.2.as_f64() as f32, self.3.as_f64() as f32)
    }
}

/// BN forward: `y = (x - mu)·scale + shift`.
#[inline]
pub fn affine(x: &[f32], y: &mut [f32], coef: (f32, f32, f32)) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::affine(x, y, coef) };
    }
    let _ = (x, y, coef);
    false
}

/// BN backward: `dx = a·dy + b·(x - mu) + k`.
#[inline]
pub fn bn_gradient(x: &[f32], dy: &[f32], dx: &mut [f32], coef: (f32, f32, f32, f32)) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::bn_gradient(x, dy, dx, coef) };
    }
    let _ = (x, dy, dx, coef);
    false
}

/// LayerNorm forward, one row: `y = gamma·((x - m)·i) + beta`.
#[inline]
pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], coef: (f32, f32)) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::layer_norm_row(x, gamma, beta, y, coef) };
    }
    let _ = (x, gamma, beta, y, coef);
    false
}

/// LayerNorm backward, one row: `dx = i·(g - mg - (x - m)·i·mgx)` with `g`
/// the row's `dy·gamma`.
#[inline]
pub fn layer_norm_gradient(x: &[f32], g: &[f32], dx: &mut [f32], coef: (f32, f32, f32, f32)) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { avx512::layer_norm_gradient(x, g, dx, coef) };
    }
    let _ = (x, g, dx, coef);
    false
}

/// Orders a task's streaming stores before whatever reads them next.
#[inline]
pub fn fence(streamed: bool) {
    #[cfg(target_arch = "x86_64")]
    if streamed {
        // SAFETY: sfence is SSE, which every x86-64 CPU has
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = streamed;
}

/// The sweeps, compiled for AVX-512; callers check that the CPU has it.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `out[i] = f(i-th vectors of the inputs)` for whole vectors, with
    /// streaming stores; false (nothing written) unless `out` is 64-byte
    /// aligned, whole vectors, and as long as every input.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn sweep<const N: usize>(inputs: [&[f32]; N], out: &mut [f32], f: impl Fn([__m512; N]) -> __m512) -> bool {
        let len = out.len();
        if !len.is_multiple_of(16)
            || !(out.as_ptr() as usize).is_multiple_of(64)
            || inputs.iter().any(|v| v.len() != len)
        {
            return false;
        }
        for (k, o) in out.chunks_exact_mut(16).enumerate() {
            // SAFETY: every input holds len values, o is 16 values at a
            // 64-byte boundary (checked above)
            unsafe {
                let v: [__m512; N] = std::array::from_fn(|j| _mm512_loadu_ps(inputs[j].as_ptr().add(16 * k)));
                _mm512_stream_ps(o.as_mut_ptr(), f(v));
            }
        }
        true
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn affine(x: &[f32], y: &mut [f32], (mu, scale, shift): (f32, f32, f32)) -> bool {
        let (m, sc, sh) = (_mm512_set1_ps(mu), _mm512_set1_ps(scale), _mm512_set1_ps(shift));
        sweep([x], y, |[v]| _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v, m), sc), sh))
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn bn_gradient(x: &[f32], dy: &[f32], dx: &mut [f32], (a, b, k, mu): (f32, f32, f32, f32)) -> bool {
        let (av, bv, kv, m) = (_mm512_set1_ps(a), _mm512_set1_ps(b), _mm512_set1_ps(k), _mm512_set1_ps(mu));
        sweep([x, dy], dx, |[v, g]| {
            _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(av, g), _mm512_mul_ps(bv, _mm512_sub_ps(v, m))), kv)
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], y: &mut [f32], (m, i): (f32, f32)) -> bool {
        let (mv, iv) = (_mm512_set1_ps(m), _mm512_set1_ps(i));
        sweep([x, gamma, beta], y, |[v, g, b]| {
            _mm512_add_ps(_mm512_mul_ps(g, _mm512_mul_ps(_mm512_sub_ps(v, mv), iv)), b)
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    pub fn layer_norm_gradient(x: &[f32], g: &[f32], dx: &mut [f32], (m, i, mg, mgx): (f32, f32, f32, f32)) -> bool {
        let (mv, iv, mgv, mgxv) = (_mm512_set1_ps(m), _mm512_set1_ps(i), _mm512_set1_ps(mg), _mm512_set1_ps(mgx));
        sweep([x, g], dx, |[v, gv]| {
            let centered = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(v, mv), iv), mgxv);
            _mm512_mul_ps(iv, _mm512_sub_ps(_mm512_sub_ps(gv, mgv), centered))
        })
    }
}
