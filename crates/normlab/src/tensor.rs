//! A contiguous, row-major tensor: a shape and a buffer of scalars whose
//! start is 64-byte aligned ([`AlignedVec`]). Images are NCHW as in
//! PyTorch. Nothing clever: no strides, no views, no autograd. Layers own
//! their output tensors and resize them in place, so a training step reuses
//! the same allocations batch after batch.

use crate::aligned::AlignedVec;
use crate::real::Real;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T: Copy = f32> {
    shape: Vec<usize>,
    data: AlignedVec<T>,
}

impl<T: Real> Default for Tensor<T> {
    fn default() -> Self {
        Tensor { shape: vec![0], data: AlignedVec::new() }
    }
}

impl<T: Real> Tensor<T> {
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor { shape: shape.to_vec(), data: AlignedVec::from_elem(T::zero(), shape.iter().product()) }
    }

    pub fn full(shape: &[usize], value: T) -> Self {
        Tensor { shape: shape.to_vec(), data: AlignedVec::from_elem(value, shape.iter().product()) }
    }

    /// Wraps `data`; fails if its length is not the product of `shape`.
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

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn data(&self) -> &[T] {
        self.data.as_slice()
    }
    pub fn data_mut(&mut self) -> &mut [T] {
        self.data.as_mut_slice()
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data.as_slice().to_vec()
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

    /// Same data, new shape of the same size.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let numel: usize = shape.iter().product();
        if numel != self.data.len() {
            return Err(Error::shape("Tensor", format!("cannot reshape {:?} into {shape:?}", self.shape)));
        }
        self.shape = shape.to_vec();
        Ok(())
    }

    pub fn fill(&mut self, value: T) {
        self.data.as_mut_slice().fill(value);
    }

    pub fn copy_from(&mut self, other: &Tensor<T>) {
        self.resize(other.shape());
        self.data.as_mut_slice().copy_from_slice(other.data());
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.data().iter().map(|v| v.as_f64()).collect()
    }

    pub fn cast<U: Real>(&self) -> Tensor<U> {
        let data: Vec<U> = self.data().iter().map(|v| U::from_f64(v.as_f64())).collect();
        Tensor { shape: self.shape.clone(), data: AlignedVec::from_slice(&data) }
    }

    pub fn all_finite(&self) -> bool {
        self.data().iter().all(|v| v.is_finite())
    }
}
