//! `(N, d1, d2, ...) -> (N, d1·d2·...)`, as `nn.Flatten()`.

use super::{check_built, Layer, Mode};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

#[derive(Default)]
pub struct Flatten<T: Real = f32> {
    features: usize,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Flatten<T> {
    pub fn new() -> Self {
        Flatten { features: 0, y: Tensor::default(), dx: Tensor::default() }
    }
}

impl<T: Real> Layer<T> for Flatten<T> {
    fn kind(&self) -> String {
        "Flatten".into()
    }

    /// A copy, on one thread.
    fn splits_work(&self, _input_len: usize) -> bool {
        false
    }
    fn build(&mut self, input: &[usize], _rng: &mut Rng) -> Result<Vec<usize>> {
        self.features = input.iter().product();
        Ok(vec![self.features])
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        check_built("Flatten", self.features > 0)?;
        let n = x.dim(0);
        if x.numel() != n * self.features {
            return Err(crate::Error::shape(
                "Flatten",
                format!("expected {} values per example, got shape {:?}", self.features, x.shape()),
            ));
        }
        self.y.resize(&[n, self.features]);
        self.y.data_mut().copy_from_slice(x.data());
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        if need_dx {
            self.dx.resize(x.shape());
            self.dx.data_mut().copy_from_slice(dy.data());
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
