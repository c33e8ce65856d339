//! `(N, d1, d2, ...) -> (N, d1·d2·...)`, as `nn.Flatten()`.

use super::{check_built, check_grad, Layer, Mode};
use crate::real::Real;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// Flattens every dimension after the batch one, as `nn.Flatten()`:
/// `(N, d1, d2, ...) -> (N, d1·d2·...)`.
#[derive(Default)]
pub struct Flatten<T: Real = f32> {
    features: usize,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> Flatten<T> {
    /// A flatten layer; the number of features is inferred at build.
    pub fn new() -> Self {
        Flatten { features: 0, y: Tensor::default(), dx: Tensor::default() }
    }
}

impl<T: Real> Flatten<T> {
    /// The batch size of `x`, checked: built, a batch dimension, and
    /// `features` values per example.
    fn batch(&self, layer: &str, x: &Tensor<T>) -> Result<usize> {
        check_built(layer, self.features > 0)?;
        let n = x.shape().first().copied().unwrap_or(0);
        if x.rank() == 0 || x.numel() != n * self.features {
            return Err(crate::Error::shape(
                layer,
                format!("expected (N, ...) with {} values per example, got shape {:?}", self.features, x.shape()),
            ));
        }
        Ok(n)
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
        if self.features == 0 {
            return Err(crate::Error::shape("Flatten", format!("one example of shape {input:?} has no values")));
        }
        Ok(vec![self.features])
    }
    fn forward(&mut self, x: &Tensor<T>, _mode: Mode) -> Result<&Tensor<T>> {
        let n = self.batch("Flatten", x)?;
        self.y.resize(&[n, self.features]);
        self.y.data_mut().copy_from_slice(x.data());
        Ok(&self.y)
    }
    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, need_dx: bool) -> Result<&Tensor<T>> {
        let n = self.batch("Flatten (backward)", x)?;
        check_grad("Flatten", dy, &[n, self.features])?;
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
