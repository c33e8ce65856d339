//! Elementwise activations, as PyTorch's modules: `Sigmoid` and `ReLU`
//! (each with its own loop), and `LeakyReLU`, `Tanh`, `SiLU` and `GELU`
//! (exact or tanh form) as [`Pointwise`] layers of a [`PointwiseFn`]. All
//! run through one elementwise loop compiled for each instruction set
//! (`multiversion!`), in parallel on large tensors.

use rayon::prelude::*;

use super::batch_norm::BnActivation;
use super::{check_forward_ran, check_grad, BatchNorm, Layer, Mode, PAR_MIN};
use crate::kernels::activation::{Activation, ReluAct, SigmoidAct};

use crate::kernels::multiversion;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// A function of one value that rayon's tasks may share.
trait Unary<T>: Fn(T) -> T + Sync {}
impl<T, F: Fn(T) -> T + Sync> Unary<T> for F {}

/// A function of two values that rayon's tasks may share.
pub(crate) trait Binary<T>: Fn(T, T) -> T + Sync {}
impl<T, F: Fn(T, T) -> T + Sync> Binary<T> for F {}

multiversion! {
    /// Applies `f` to each (input, output) pair, on rayon when the tensor is
    /// large; `f` is inlined into each instruction set's version.
    fn map_into<T: Real, F: Unary<T>>(src: &[T], dst: &mut [T], f: F) {
        if dst.len() >= PAR_MIN {
            dst.par_chunks_mut(PAR_MIN / 4)
                .zip(src.par_chunks(PAR_MIN / 4))
                .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d = f(s)));
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f(s));
        }
    }
}

multiversion! {
    /// Like [`map_into`] with two inputs, all three of one length (the
    /// callers check the shapes first).
    pub(crate) fn zip_into<T: Real, F: Binary<T>>(a: &[T], b: &[T], dst: &mut [T], f: F) {
        if dst.len() >= PAR_MIN {
            dst.par_chunks_mut(PAR_MIN / 4).zip(a.par_chunks(PAR_MIN / 4).zip(b.par_chunks(PAR_MIN / 4))).for_each(
                |(d, (a, b))| {
                    for i in 0..d.len() {
                        d[i] = f(a[i], b[i]);
                    }
                },
            );
        } else {
            for i in 0..dst.len() {
                dst[i] = f(a[i], b[i]);
            }
        }
    }
}

/// The logistic sigmoid, as `nn.Sigmoid`: `y = 1 / (1 + exp(-x))`;
/// backward `dx = dy · y · (1 - y)`.
#[derive(Default)]
pub struct Sigmoid<T: Real = f32> {
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Sigmoid<T> {
    /// A sigmoid layer, as `nn.Sigmoid()`.
    pub fn new() -> Self {
        Sigmoid { y: Tensor::default(), dx: Tensor::default() }
    }
}

use crate::kernels::sigmoid::sigmoid;

impl<T: Real> Layer<T> for Sigmoid<T> {
    fn kind(&self) -> String {
        "Sigmoid".into()
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        self.y.resize(x.shape());
        // the formula the fused batch norm applies too (kernels::activation)
        map_into(x.data(), self.y.data_mut(), |v| SigmoidAct.value(v));
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("Sigmoid", self.y.shape(), x.shape())?;
        check_grad("Sigmoid", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            zip_into(self.y.data(), dy.data(), self.dx.data_mut(), |y, dy| dy * y * (T::one() - y));
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
    fn fuse_after_batch_norm(
        &self,
        bn: Box<BatchNorm<T>>,
    ) -> std::result::Result<Box<dyn Layer<T>>, Box<BatchNorm<T>>> {
        Ok(Box::new(BnActivation::new(*bn, SigmoidAct, self.kind())))
    }
}

/// The rectifier, as `nn.ReLU`: `y = max(x, 0)`; backward
/// `dx = dy · [x > 0]`.
#[derive(Default)]
pub struct ReLU<T: Real = f32> {
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> ReLU<T> {
    /// A ReLU layer, as `nn.ReLU()`.
    pub fn new() -> Self {
        ReLU { y: Tensor::default(), dx: Tensor::default() }
    }
}

impl<T: Real> Layer<T> for ReLU<T> {
    fn kind(&self) -> String {
        "ReLU".into()
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        self.y.resize(x.shape());
        map_into(x.data(), self.y.data_mut(), |v| ReluAct.value(v));
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("ReLU", self.y.shape(), x.shape())?;
        check_grad("ReLU", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            zip_into(x.data(), dy.data(), self.dx.data_mut(), |x, dy| ReluAct.grad(x, dy));
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
    fn fuse_after_batch_norm(
        &self,
        bn: Box<BatchNorm<T>>,
    ) -> std::result::Result<Box<dyn Layer<T>>, Box<BatchNorm<T>>> {
        Ok(Box::new(BnActivation::new(*bn, ReluAct, self.kind())))
    }
}

/// A function applied value by value, with its derivative: what a
/// [`Pointwise`] layer computes.
pub trait PointwiseFn<T: Real>: Copy + Send + Sync + 'static {
    /// The layer's name, as PyTorch's module (`Tanh`, `GELU`, ...).
    fn name(&self) -> &'static str;
    /// `f(x)`.
    fn value(&self, x: T) -> T;
    /// `f'(x)`.
    fn slope(&self, x: T) -> T;
}

/// A layer that applies a [`PointwiseFn`] to every value: forward
/// `y = f(x)`, backward `dx = dy · f'(x)`. Use it through [`LeakyReLU`],
/// [`Tanh`], [`SiLU`] and [`GELU`].
pub struct Pointwise<T: Real, F: PointwiseFn<T>> {
    f: F,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real, F: PointwiseFn<T>> Pointwise<T, F> {
    /// A layer applying `f`.
    pub fn with(f: F) -> Self {
        Pointwise { f, y: Tensor::default(), dx: Tensor::default() }
    }
    /// The function applied (with its settings, e.g. a leaky ReLU's slope).
    pub fn function(&self) -> F {
        self.f
    }
}

impl<T: Real, F: PointwiseFn<T>> Layer<T> for Pointwise<T, F> {
    fn kind(&self) -> String {
        self.f.name().into()
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        self.y.resize(x.shape());
        let f = self.f;
        map_into(x.data(), self.y.data_mut(), move |v| f.value(v));
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran(self.f.name(), self.y.shape(), x.shape())?;
        check_grad(self.f.name(), dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            let f = self.f;
            zip_into(x.data(), dy.data(), self.dx.data_mut(), move |x, dy| dy * f.slope(x));
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
    fn fuse_after_batch_norm(
        &self,
        bn: Box<BatchNorm<T>>,
    ) -> std::result::Result<Box<dyn Layer<T>>, Box<BatchNorm<T>>> {
        Ok(Box::new(BnActivation::new(*bn, PointwiseAct(self.f), self.kind())))
    }
}

/// A [`PointwiseFn`] as the fused batch-norm kernels apply it, with the
/// arithmetic of [`Pointwise`]'s own passes.
#[derive(Clone, Copy)]
struct PointwiseAct<F>(F);

impl<T: Real, F: PointwiseFn<T>> Activation<T> for PointwiseAct<F> {
    #[inline(always)]
    fn value(&self, h: T) -> T {
        self.0.value(h)
    }
    #[inline(always)]
    fn grad(&self, h: T, dy: T) -> T {
        dy * self.0.slope(h)
    }
}

/// `nn.LeakyReLU(negative_slope)`: `y = x` for `x > 0`, else `a·x`;
/// `f'(x) = 1` for `x > 0`, else `a` (at 0 too, as PyTorch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeakyReLUFn {
    /// `a`, PyTorch's `negative_slope` (default 0.01).
    pub negative_slope: f64,
}

impl<T: Real> PointwiseFn<T> for LeakyReLUFn {
    fn name(&self) -> &'static str {
        "LeakyReLU"
    }
    #[inline(always)]
    fn value(&self, x: T) -> T {
        if x > T::zero() {
            x
        } else {
            x * T::from_f64(self.negative_slope)
        }
    }
    #[inline(always)]
    fn slope(&self, x: T) -> T {
        if x > T::zero() {
            T::one()
        } else {
            T::from_f64(self.negative_slope)
        }
    }
}

/// `nn.LeakyReLU`: see [`LeakyReLUFn`].
pub type LeakyReLU<T = f32> = Pointwise<T, LeakyReLUFn>;

impl<T: Real> Pointwise<T, LeakyReLUFn> {
    /// `nn.LeakyReLU(negative_slope)`; PyTorch's default slope is 0.01.
    pub fn new(negative_slope: f64) -> Self {
        Pointwise::with(LeakyReLUFn { negative_slope })
    }
}

/// `nn.Tanh`: `y = tanh(x)`, `f'(x) = 1 - tanh(x)²`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TanhFn;

impl<T: Real> PointwiseFn<T> for TanhFn {
    fn name(&self) -> &'static str {
        "Tanh"
    }
    #[inline(always)]
    fn value(&self, x: T) -> T {
        x.tanh()
    }
    #[inline(always)]
    fn slope(&self, x: T) -> T {
        let t = x.tanh();
        T::one() - t * t
    }
}

/// `nn.Tanh`: see [`TanhFn`].
pub type Tanh<T = f32> = Pointwise<T, TanhFn>;

impl<T: Real> Pointwise<T, TanhFn> {
    /// `nn.Tanh()`.
    pub fn new() -> Self {
        Pointwise::with(TanhFn)
    }
}

impl<T: Real> Default for Pointwise<T, TanhFn> {
    fn default() -> Self {
        Self::new()
    }
}

/// `nn.SiLU` (swish): `y = x·σ(x)` with the logistic `σ`;
/// `f'(x) = σ(x)·(1 + x·(1 - σ(x)))`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiLUFn;

impl<T: Real> PointwiseFn<T> for SiLUFn {
    fn name(&self) -> &'static str {
        "SiLU"
    }
    #[inline(always)]
    fn value(&self, x: T) -> T {
        x * sigmoid(x)
    }
    #[inline(always)]
    fn slope(&self, x: T) -> T {
        let s = sigmoid(x);
        s * (T::one() + x * (T::one() - s))
    }
}

/// `nn.SiLU`: see [`SiLUFn`].
pub type SiLU<T = f32> = Pointwise<T, SiLUFn>;

impl<T: Real> Pointwise<T, SiLUFn> {
    /// `nn.SiLU()`.
    pub fn new() -> Self {
        Pointwise::with(SiLUFn)
    }
}

impl<T: Real> Default for Pointwise<T, SiLUFn> {
    fn default() -> Self {
        Self::new()
    }
}

/// `nn.GELU(approximate)`. Exact (`approximate='none'`, PyTorch's default):
/// `y = x·Φ(x)` with `Φ(x) = (1 + erf(x/√2))/2`, `f'(x) = Φ(x) + x·φ(x)`,
/// `φ(x) = exp(-x²/2)/√(2π)`. With `tanh: true` (`approximate='tanh'`):
/// `y = x·(1 + tanh(u))/2` with `u = √(2/π)·(x + 0.044715·x³)`, and
/// `f'(x) = (1 + t)/2 + x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²)/2`, `t = tanh(u)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GELUFn {
    /// PyTorch's `approximate='tanh'` when true.
    pub tanh: bool,
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of GELU's tanh form.
const GELU_CUBIC: f64 = 0.044715;

impl<T: Real> PointwiseFn<T> for GELUFn {
    fn name(&self) -> &'static str {
        "GELU"
    }
    #[inline(always)]
    fn value(&self, x: T) -> T {
        let half = T::from_f64(0.5);
        if self.tanh {
            let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::from_f64(GELU_CUBIC) * x * x * x);
            half * x * (T::one() + u.tanh())
        } else {
            half * x * (T::one() + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
        }
    }
    #[inline(always)]
    fn slope(&self, x: T) -> T {
        let half = T::from_f64(0.5);
        if self.tanh {
            let k = T::from_f64(SQRT_2_OVER_PI);
            let c = T::from_f64(GELU_CUBIC);
            let t = (k * (x + c * x * x * x)).tanh();
            half * (T::one() + t) + half * x * (T::one() - t * t) * k * (T::one() + T::from_f64(3.0) * c * x * x)
        } else {
            let cdf = half * (T::one() + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = (-half * x * x).exp() * T::from_f64(0.398_942_280_401_432_7);
            cdf + x * pdf
        }
    }
}

/// `nn.GELU`: see [`GELUFn`].
pub type GELU<T = f32> = Pointwise<T, GELUFn>;

impl<T: Real> Pointwise<T, GELUFn> {
    /// `nn.GELU()` (exact, with erf), or `nn.GELU(approximate='tanh')` when
    /// `tanh` is true.
    pub fn new(tanh: bool) -> Self {
        Pointwise::with(GELUFn { tanh })
    }
}
