//! A contiguous, row-major tensor: a shape and a buffer of scalars whose
//! start is 64-byte aligned (a cache line, an AVX-512 vector). Images are
//! NCHW as in PyTorch. Nothing clever: no strides, no views, no autograd. Layers own
//! their output tensors and resize them in place, so a training step reuses
//! the same allocations batch after batch.

use crate::aligned::AlignedVec;
use crate::real::Real;
use crate::{Error, Result};

/// A dense, contiguous, row-major array of `T` (f32 unless stated), like a
/// contiguous `torch.Tensor` without autograd; images are `(N, C, H, W)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T: Copy = f32> {
    shape: Vec<usize>,
    data: AlignedVec<T>,
}

/// An empty tensor of shape `[0]`, allocating nothing.
impl<T: Real> Default for Tensor<T> {
    fn default() -> Self {
        Tensor { shape: vec![0], data: AlignedVec::new() }
    }
}

impl<T: Real> Tensor<T> {
    /// A tensor of `shape` filled with zeros, as `torch.zeros(shape)`.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: AlignedVec::from_elem(T::zero(), shape.iter().product()) }
    }

    /// A tensor of `shape` filled with `value`, as `torch.full(shape, value)`.
    pub fn full(shape: &[usize], value: T) -> Self {
        Tensor { shape: shape.to_vec(), data: AlignedVec::from_elem(value, shape.iter().product()) }
    }

    /// A tensor of `shape` holding `data` in row-major order (copied into an
    /// aligned buffer); fails if its length is not the product of `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::shape("Tensor", format!("shape {shape:?} needs {numel} values, got {}", data.len())));
        }
        Ok(Tensor { shape: shape.to_vec(), data: AlignedVec::from_slice(&data) })
    }

    /// Converts from f64 values (tests and fixtures).
    pub fn from_f64(shape: &[usize], data: &[f64]) -> Result<Self> {
        Self::from_vec(shape, data.iter().map(|&v| T::from_f64(v)).collect())
    }

    /// The size of each dimension, outermost first (`x.shape` in PyTorch).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The size of dimension `i` (`x.size(i)`); panics if `i >= rank()`.
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    /// The number of dimensions (`x.dim()` in PyTorch).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// The number of values, the product of the shape (`x.numel()`).
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The values in row-major order.
    pub fn data(&self) -> &[T] {
        self.data.as_slice()
    }
    /// The values in row-major order, mutable.
    pub fn data_mut(&mut self) -> &mut [T] {
        self.data.as_mut_slice()
    }

    /// Sets the shape, keeping the allocation when it is large enough. The
    /// contents are unspecified afterwards: callers overwrite every element.
    pub fn resize(&mut self, shape: &[usize]) {
        let numel = shape.iter().product();
        if self.shape != shape {
            self.shape.clear();
            self.shape.extend_from_slice(shape);
        }
        self.data.resize(numel, T::zero());
    }

    /// Same data, new shape with the same number of values (`x.view(shape)`
    /// on a contiguous tensor, in place); fails otherwise.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let numel: usize = shape.iter().product();
        if numel != self.data.len() {
            return Err(Error::shape("Tensor", format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    /// Sets every value to `value` (`x.fill_(value)`).
    pub fn fill(&mut self, value: T) {
        self.data.as_mut_slice().fill(value);
    }

    /// Makes this tensor a copy of `other`, shape included, reusing the
    /// allocation when it is large enough.
    pub fn copy_from(&mut self, other: &Tensor<T>) {
        self.resize(other.shape());
        self.data.as_mut_slice().copy_from_slice(other.data());
    }

    /// The values widened to f64 (exactly), in row-major order.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data().iter().map(|v| v.as_f64()).collect()
    }

    /// The same tensor with values converted to `U` through f64 (`x.to(dtype)`):
    /// exact from f32 to f64, rounded to nearest from f64 to f32.
    pub fn cast<U: Real>(&self) -> Tensor<U> {
        let data: Vec<U> = self.data().iter().map(|v| U::from_f64(v.as_f64())).collect();
        Tensor { shape: self.shape.clone(), data: AlignedVec::from_slice(&data) }
    }

    /// Whether no value is NaN or infinite (`torch.isfinite(x).all()`).
    pub fn all_finite(&self) -> bool {
        self.data().iter().all(|v| v.is_finite())
    }
}
