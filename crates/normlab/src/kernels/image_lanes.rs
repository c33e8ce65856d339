//! Sixteen rows of floats turned into the sixteen lanes of AVX-512 vectors
//! and back: `lanes[q·16 + r] = rows[r][q]`. With sixteen images in the
//! lanes, a convolution over one input channel becomes a plain sequence of
//! full-width multiply-adds (see `conv_lanes`); with a layer's channels in
//! the lanes, its weight gradient broadcasts one input per tap (see
//! `conv_direct`).
//!
//! The transposition goes by 16x16 blocks held in registers: four rounds of
//! two-source permutes, each round swapping one bit of the row index with
//! the same bit of the column index. Written one value at a time it took 6
//! of the 20 µs of conv2's 8-image weight gradient.
//!
//! Lane-layout buffers are read a whole 64-byte vector at a time, so they
//! belong in a 64-byte-aligned buffer (the library's private `AlignedVec`):
//! a vector that straddles two cache lines costs two loads (LeNet's first
//! weight gradient in lanes, one thread: 25.7 µs per 16 images unaligned,
//! 17.1 aligned).

use crate::real::Real;

/// Rows per block, and lanes per vector.
pub const LANES: usize = 16;

/// Whether [`to_lanes`] and [`from_lanes`] run for rows of `len` values of
/// type `T`: f32 on AVX-512, whole blocks of 16 values.
pub fn applies<T: Real>(len: usize) -> bool {
    crate::isa::avx512() && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && len.is_multiple_of(LANES)
}

/// `lanes[q·16 + r] = src[r·stride + q]` for the first `rows` rows (at most
/// 16) and `q < len`; lanes `rows..16` get zeros. `len` must be a multiple of
/// 16 ([`applies`]) and `lanes` hold `16·len` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
fn to_lanes_avx512(src: &[f32], rows: usize, stride: usize, len: usize, lanes: &mut [f32]) {
    use std::arch::x86_64::*;
    check(src.len(), rows, stride, len, lanes.len());
    let perm = Permutes::new();
    // SAFETY: loads read src[r·stride + q0 ..][..16] with r < rows and
    // q0 + 16 ≤ len, stores write lanes[(q0 + k)·16 ..][..16] with q0 + k <
    // len, all inside the slices (check()); AVX-512F is compiled in
    unsafe {
        for q0 in (0..len).step_by(LANES) {
            // a plain loop, not array::from_fn (compiled without AVX-512, it
            // would keep its closure a call)
            let mut block = [_mm512_setzero_ps(); LANES];
            for (r, v) in block.iter_mut().enumerate().take(rows) {
                *v = _mm512_loadu_ps(src.as_ptr().add(r * stride + q0));
            }
            for (k, v) in perm.transpose(block).iter().enumerate() {
                _mm512_storeu_ps(lanes.as_mut_ptr().add((q0 + k) * LANES), *v);
            }
        }
    }
}

/// The inverse of [`to_lanes`]: `dst[r·stride + q] = lanes[q·16 + r]` for
/// the first `rows` rows and `q < len`; lanes `rows..16` are not read back.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
fn from_lanes_avx512(lanes: &[f32], rows: usize, len: usize, dst: &mut [f32], stride: usize) {
    use std::arch::x86_64::*;
    check(dst.len(), rows, stride, len, lanes.len());
    let perm = Permutes::new();
    // SAFETY: as in to_lanes, with loads and stores swapped
    unsafe {
        for q0 in (0..len).step_by(LANES) {
            let mut block = [_mm512_setzero_ps(); LANES];
            for (k, v) in block.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(lanes.as_ptr().add((q0 + k) * LANES));
            }
            let out = perm.transpose(block);
            // all 16 with a test each rather than `take(rows)`: constant
            // indices keep `out` in registers
            for (r, v) in out.iter().enumerate() {
                if r < rows {
                    _mm512_storeu_ps(dst.as_mut_ptr().add(r * stride + q0), *v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// The row-major side holds `rows` rows of `len` values `stride` apart; the
/// lane side `16·len` values.
fn check(row_side: usize, rows: usize, stride: usize, len: usize, lane_side: usize) {
    assert!(
        rows <= LANES
            && len.is_multiple_of(LANES)
            && lane_side >= len * LANES
            && (rows == 0 || row_side >= (rows - 1) * stride + len),
        "image_lanes: {rows} rows of {len} values {stride} apart in {row_side}, {lane_side} lane values"
    );
}

#[cfg(target_arch = "x86_64")]
/// Round `k` of the transposition swaps bit `k` of the row index with bit
/// `k` of the column index: rows r and r|bit trade the elements whose
/// column has that bit set for the other row's elements whose column has it
/// clear. `PERMUTES[k]` picks row r's new elements, `PERMUTES[4 + k]` row
/// r|bit's, from the pair (indices 16.. pick from the second row).
const PERMUTES: [[i32; LANES]; 8] = {
    let mut table = [[0i32; LANES]; 8];
    let mut k = 0;
    while k < 4 {
        let bit = 1 << k;
        let mut c = 0;
        while c < LANES {
            let set = c & bit != 0;
            table[k][c] = if set { 16 + (c ^ bit) } else { c } as i32;
            table[4 + k][c] = if set { 16 + c } else { c | bit } as i32;
            c += 1;
        }
        k += 1;
    }
    table
};

/// The index vectors of the four permute rounds, in registers.
#[cfg(target_arch = "x86_64")]
struct Permutes {
    lower: [std::arch::x86_64::__m512i; 4],
    upper: [std::arch::x86_64::__m512i; 4],
}

#[cfg(target_arch = "x86_64")]
impl Permutes {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn new() -> Self {
        use std::arch::x86_64::*;
        // SAFETY: 16 i32s each; AVX-512F is compiled in
        unsafe {
            Permutes {
                lower: std::array::from_fn(|k| _mm512_loadu_si512(PERMUTES[k].as_ptr() as *const _)),
                upper: std::array::from_fn(|k| _mm512_loadu_si512(PERMUTES[4 + k].as_ptr() as *const _)),
            }
        }
    }

    /// `out[c][r] = block[r][c]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    #[inline]
    fn transpose(&self, mut rows: [std::arch::x86_64::__m512; LANES]) -> [std::arch::x86_64::__m512; LANES] {
        use std::arch::x86_64::*;
        for k in 0..4 {
            let bit = 1 << k;
            for r in 0..LANES {
                if r & bit != 0 {
                    continue;
                }
                let (a, b) = (rows[r], rows[r | bit]);
                rows[r] = _mm512_permutex2var_ps(a, self.lower[k], b);
                rows[r | bit] = _mm512_permutex2var_ps(a, self.upper[k], b);
            }
        }
        rows
    }
}

/// `out[c]` lane `r` = `rows[r]` lane `c`: a 16x16 block of floats
/// transposed in registers (the kernels that keep channels in the lanes
/// store their tiles to planes through it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
#[inline]
pub(crate) fn transpose16(rows: [std::arch::x86_64::__m512; LANES]) -> [std::arch::x86_64::__m512; LANES] {
    Permutes::new().transpose(rows)
}

/// The first `n` (1 to 16) values of `v` to `p`.
///
/// # Safety
/// AVX-512F; `p` writable for `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
#[inline]
pub(crate) unsafe fn store_first16(p: *mut f32, v: std::arch::x86_64::__m512, n: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's; the mask stores lanes 0..n only
    unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v) }
}

/// [`transpose16`] for AVX2's 8x8 blocks: unpacks within 128-bit halves,
/// then the halves exchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    // t: pairs of rows interleaved; u: four rows' lane k of each half
    let t: [__m256; 8] = std::array::from_fn(|k| {
        let (a, b) = (r[2 * (k / 2)], r[2 * (k / 2) + 1]);
        if k % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    let u: [__m256; 8] = std::array::from_fn(|k| {
        // k = 4·g + m: rows 4g..4g+4, m = 2·(hi unpack) + (upper pair)
        let (g, m) = (k / 4, k % 4);
        let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
        if m % 2 == 0 {
            _mm256_shuffle_ps::<0b01_00_01_00>(a, b)
        } else {
            _mm256_shuffle_ps::<0b11_10_11_10>(a, b)
        }
    });
    std::array::from_fn(|c| {
        let (a, b) = (u[c % 4], u[4 + c % 4]);
        if c < 4 {
            _mm256_permute2f128_ps::<0x20>(a, b)
        } else {
            _mm256_permute2f128_ps::<0x31>(a, b)
        }
    })
}

/// The first `n` (1 to 8) values of `v` to `p`.
///
/// # Safety
/// AVX2; `p` writable for `n` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn store_first8(p: *mut f32, v: std::arch::x86_64::__m256, n: usize) {
    use std::arch::x86_64::*;
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    // SAFETY: the caller's; the mask stores lanes 0..n only
    unsafe { _mm256_maskstore_ps(p, mask, v) }
}

/// `lanes[q·16 + r] = src[r·stride + q]` for the first `rows` rows (at most
/// 16) and `q < len`; lanes `rows..16` get zeros. Panics unless
/// [`applies`] (AVX-512 only).
pub fn to_lanes(src: &[f32], rows: usize, stride: usize, len: usize, lanes: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { to_lanes_avx512(src, rows, stride, len, lanes) };
    }
    let _ = (src, rows, stride, len, lanes);
    unreachable!("image_lanes::applies() is false without AVX-512")
}

/// The inverse of [`to_lanes`]: `dst[r·stride + q] = lanes[q·16 + r]` for
/// the first `rows` rows. Panics unless [`applies`] (AVX-512 only).
pub fn from_lanes(lanes: &[f32], rows: usize, len: usize, dst: &mut [f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512() {
        // SAFETY: the CPU has AVX-512 (isa::active checked it)
        return unsafe { from_lanes_avx512(lanes, rows, len, dst, stride) };
    }
    let _ = (lanes, rows, len, dst, stride);
    unreachable!("image_lanes::applies() is false without AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both register transposes, and the partial stores, against indices.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn register_blocks_transpose() {
        use std::arch::x86_64::*;
        let value = |r: usize, c: usize| (r * 100 + c) as f32;
        if crate::isa::detected() >= crate::isa::Isa::Avx512 {
            // SAFETY: the CPU has AVX-512 (detected); every pointer covers 16 values
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|r| {
                    let v: [f32; 16] = std::array::from_fn(|c| value(r, c));
                    _mm512_loadu_ps(v.as_ptr())
                });
                for (c, v) in transpose16(rows).iter().enumerate() {
                    let mut out = [f32::NAN; 17];
                    store_first16(out.as_mut_ptr(), *v, 16 - c % 16);
                    for (r, &got) in out.iter().enumerate() {
                        let want = if r < 16 - c % 16 { value(r, c) } else { f32::NAN };
                        assert_eq!(got.to_bits(), want.to_bits(), "16 lanes: ({r}, {c})");
                    }
                }
            }
        } else {
            println!("skipped: no AVX-512 here for the 16x16 transpose");
        }
        if crate::isa::detected() >= crate::isa::Isa::Avx2 {
            // SAFETY: the CPU has AVX2 and FMA (detected); every pointer covers 8 values
            unsafe {
                let rows: [__m256; 8] = std::array::from_fn(|r| {
                    let v: [f32; 8] = std::array::from_fn(|c| value(r, c));
                    _mm256_loadu_ps(v.as_ptr())
                });
                for (c, v) in transpose8(rows).iter().enumerate() {
                    let mut out = [f32::NAN; 9];
                    store_first8(out.as_mut_ptr(), *v, 8 - c);
                    for (r, &got) in out.iter().enumerate() {
                        let want = if r < 8 - c { value(r, c) } else { f32::NAN };
                        assert_eq!(got.to_bits(), want.to_bits(), "8 lanes: ({r}, {c})");
                    }
                }
            }
        } else {
            println!("skipped: no AVX2 here for the 8x8 transpose");
        }
    }

    /// Whether this build has the AVX-512 forms.
    fn wide_build() -> bool {
        crate::isa::avx512()
    }

    #[test]
    fn rows_go_to_lanes_and_back() {
        assert!(!applies::<f32>(40), "40 values: not whole blocks of 16");
        assert!(!applies::<f64>(64));
        // 16 rows packed tight; 12 rows with gaps between them; one row
        for (rows, stride, len) in [(16, 64, 64), (12, 40, 32), (1, 16, 16)] {
            assert_eq!(applies::<f32>(len), wide_build());
            if !wide_build() {
                return;
            }
            let src: Vec<f32> = (0..(rows - 1) * stride + len).map(|i| i as f32 * 0.5 - 7.0).collect();
            let mut lanes = vec![f32::NAN; 16 * len];
            to_lanes(&src, rows, stride, len, &mut lanes);
            for q in 0..len {
                for r in 0..16 {
                    let want = if r < rows { src[r * stride + q] } else { 0.0 };
                    assert_eq!(lanes[q * 16 + r].to_bits(), want.to_bits(), "{rows} rows: ({q}, {r})");
                }
            }
            // back into a buffer whose gaps must stay untouched
            let mut back = vec![f32::NAN; src.len()];
            from_lanes(&lanes, rows, len, &mut back, stride);
            for (i, (&b, &s)) in back.iter().zip(&src).enumerate() {
                if i % stride < len {
                    assert_eq!(b.to_bits(), s.to_bits(), "{rows} rows: value {i}");
                } else {
                    assert!(b.is_nan(), "{rows} rows: gap value {i} written");
                }
            }
        }
    }
}
