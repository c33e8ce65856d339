//! Elementwise activations.

use rayon::prelude::*;

use super::{check_forward_ran, check_grad, Layer, Mode, PAR_MIN};

use crate::kernels::multiversion;
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// A function of one value that rayon's tasks may share.
trait Unary<T>: Fn(T) -> T + Sync {}
impl<T, F: Fn(T) -> T + Sync> Unary<T> for F {}

/// A function of two values that rayon's tasks may share.
trait Binary<T>: Fn(T, T) -> T + Sync {}
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
    fn zip_into<T: Real, F: Binary<T>>(a: &[T], b: &[T], dst: &mut [T], f: F) {
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
        map_into(x.data(), self.y.data_mut(), sigmoid);
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
        map_into(x.data(), self.y.data_mut(), |v| if v > T::zero() { v } else { T::zero() });
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        check_forward_ran("ReLU", self.y.shape(), x.shape())?;
        check_grad("ReLU", dy, x.shape())?;
        if need_dx {
            self.dx.resize(dy.shape());
            zip_into(x.data(), dy.data(), self.dx.data_mut(), |x, dy| if x > T::zero() { dy } else { T::zero() });
        }
        Ok(&self.dx)
    }
    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
}
