//! The scalar types the layers run on: `f32` for training, `f64` for the
//! finite-difference gradient checks. Every layer is generic over [`Real`],
//! so the f64 checks exercise the generic code that f32 training also runs,
//! but not all of it: f32 has fast paths of its own that an f64 check never
//! reaches. They are [`exp_f32`] (a polynomial, where f64 calls `f64::exp`),
//! the 16-wide AVX-512 forms of the sigmoid kernels, and the f32-only kernels (the convolutions
//! in image lanes, the AVX-512 direct convolutions, the direct input
//! gradient, streaming stores) that a layer takes when their `applies()`
//! says so. Those are tested on their own, in
//! f32: against the generic code (bitwise, for the 16-wide forms and the
//! streaming stores) or, for `exp_f32`, against f64's `exp`.

use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point scalar the library computes in: `f32` (PyTorch's
/// `torch.float32`, for training) or `f64` (`torch.float64`, for gradient checks).
pub trait Real:
    num_traits::Float + Default + Debug + Send + Sync + AddAssign + SubAssign + MulAssign + DivAssign + Sum + 'static
{
    /// safetensors / PyTorch dtype name.
    const DTYPE_NAME: &'static str;

    /// `x` converted to this type: exact for f64, rounded to nearest for f32.
    fn from_f64(x: f64) -> Self;
    /// This value widened to f64 (always exact).
    fn as_f64(self) -> f64;

    /// `exp(x)`: for f32 [`exp_f32`], a form the compiler vectorizes (no libm
    /// call), within 2 ulp of the correctly rounded value; for f64 the
    /// standard library's `f64::exp`, so the f64 gradient checks differentiate
    /// the true exponential.
    fn exp_fast(self) -> Self;

    /// The error function, `erf(x) = 2/√π ∫₀ˣ exp(-t²) dt` (musl's, through
    /// the `libm` crate: within 1 ulp).
    fn erf(self) -> Self;

    /// `C = alpha * A·B + beta * C` for `A` `m×k`, `B` `k×n`, by
    /// `matrixmultiply`'s `sgemm` or `dgemm` (the library's `kernels::gemm`
    /// is the checked form).
    ///
    /// # Safety
    /// The pointers and strides must describe matrices inside live
    /// allocations, `c` not overlapping `a` or `b`; the safe wrapper in
    /// `kernels::gemm` checks this.
    unsafe fn gemm_raw(
        mkn: (usize, usize, usize),
        alpha: Self,
        a: Strided<*const Self>,
        b: Strided<*const Self>,
        beta: Self,
        c: Strided<*mut Self>,
    );
}

/// A matrix in memory: its first element, and the steps (in elements)
/// from a row to the next and from a column to the next.
#[derive(Clone, Copy, Debug)]
pub struct Strided<P> {
    /// The element at row 0, column 0.
    pub ptr: P,
    /// Elements from one row to the next.
    pub row_step: isize,
    /// Elements from one column to the next.
    pub col_step: isize,
}

/// `a·b + c` with one rounding, always: one instruction in code compiled
/// for FMA (the AVX2 and AVX-512 versions of the kernels, see
/// [`crate::isa`]), the C library's `fma` in the portable version, which
/// is slower but gives the same value, so every version of a kernel
/// computes the same results.
#[inline(always)]
pub fn mul_add<T: Real>(a: T, b: T, c: T) -> T {
    a.mul_add(b, c)
}

impl Real for f32 {
    const DTYPE_NAME: &'static str = "F32";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
    #[inline]
    fn erf(self) -> f32 {
        libm::erff(self)
    }
    unsafe fn gemm_raw(
        (m, k, n): (usize, usize, usize),
        alpha: f32,
        a: Strided<*const f32>,
        b: Strided<*const f32>,
        beta: f32,
        c: Strided<*mut f32>,
    ) {
        // SAFETY: the caller keeps the trait method's contract (matrices
        // inside live allocations, c apart from a and b), which is sgemm's
        matrixmultiply::sgemm(
            m, k, n, alpha, a.ptr, a.row_step, a.col_step, b.ptr, b.row_step, b.col_step, beta, c.ptr, c.row_step,
            c.col_step,
        )
    }
}

impl Real for f64 {
    const DTYPE_NAME: &'static str = "F64";
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }
    #[inline]
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    unsafe fn gemm_raw(
        (m, k, n): (usize, usize, usize),
        alpha: f64,
        a: Strided<*const f64>,
        b: Strided<*const f64>,
        beta: f64,
        c: Strided<*mut f64>,
    ) {
        // SAFETY: the caller keeps the trait method's contract (matrices
        // inside live allocations, c apart from a and b), which is dgemm's
        matrixmultiply::dgemm(
            m, k, n, alpha, a.ptr, a.row_step, a.col_step, b.ptr, b.row_step, b.col_step, beta, c.ptr, c.row_step,
            c.col_step,
        )
    }
}

/// `v` as the f32 slice it is, for the f32-only kernels (whose `applies()`
/// checks the type first). Panics if `T` is not f32.
pub fn as_f32<T: Real>(v: &[T]) -> &[f32] {
    assert_f32::<T>();
    // SAFETY: T is f32 (checked above)
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) }
}

/// [`as_f32`] for a mutable slice.
pub fn as_f32_mut<T: Real>(v: &mut [T]) -> &mut [f32] {
    assert_f32::<T>();
    // SAFETY: T is f32 (checked above)
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut f32, v.len()) }
}

/// The inverse of [`as_f32_mut`]: an f32 slice as one of `T`, which must
/// be f32 (for kernels that run only on f32 and hand their output back to
/// generic code).
pub fn from_f32_mut<T: Real>(v: &mut [f32]) -> &mut [T] {
    assert_f32::<T>();
    // SAFETY: T is f32 (checked above)
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, v.len()) }
}

fn assert_f32<T: Real>() {
    assert!(
        std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>(),
        "an f32 kernel called on {}",
        std::any::type_name::<T>()
    );
}

/// `e^x = 2^n · e^r` with `n = round(x·log2 e)` and `|r| ≤ ln2/2`; `e^r` by
/// Horner's rule on a degree-7 polynomial (Cephes' `expf` coefficients),
/// `2^n` by building the float's exponent bits. Branch-free, so loops over
/// it vectorize; every step a multiply-add where the target has FMA, which
/// the 16-wide form in `kernels::sigmoid` matches instruction for instruction.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(-87.0, 88.0);
    let n = mul_add(x, std::f32::consts::LOG2_E, 0.5).floor();
    let r = mul_add(-n, LN2_LO, mul_add(-n, LN2_HI, x));
    let mut p = P[0];
    for &c in &P[1..] {
        p = mul_add(p, r, c);
    }
    let er = mul_add(mul_add(p, r, 1.0), r, 1.0);
    // 2^n from n's bits: adding 1.5·2^23 puts the integer n in the low
    // mantissa bits (no float-to-int conversion, which would not vectorize)
    let n_bits = (n + SHIFTER).to_bits().wrapping_sub(SHIFTER.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    er * two_n
}

/// The constants of [`exp_f32`], shared with its 16-wide form in
/// `kernels::sigmoid`.
pub(crate) mod exp_consts {
    /// ln 2 split in two so that n·LN2_HI is exact
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// `(exp(r) - 1 - r)/r²` on |r| ≤ ln2/2, highest power first (Cephes lists
    /// the last as 5.0000001e-1, which is 0.5 in f32); `exp(r)` is then
    /// `1 + r·(1 + r·p(r))`
    pub const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    /// 1.5·2^23
    pub const SHIFTER: f32 = 12_582_912.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        // saturates instead of returning garbage bits
        assert!((0.0..1e-37).contains(&exp_f32(-1000.0)));
        assert!(exp_f32(1000.0).is_finite() && exp_f32(1000.0) > 1e38);
    }
}
