//! A normalization layer defined outside normlab: "centring" batch norm,
//! which only subtracts the per-channel batch mean (no division by the
//! standard deviation, no learned scale) and keeps a running mean for
//! prediction. It implements the public `Layer` trait, so it drops into a
//! `Sequential` next to normlab's own layers and trains with its SGD, just
//! as the chapter's hand-written `BatchNorm` class drops into PyTorch.
//!
//! ```text
//! training:   mean_c = (1/m) Σ x,   y = x - mean_c,   running = 0.9·running + 0.1·mean_c
//! prediction: y = x - running_c
//! backward:   dx = dy - (1/m) Σ dy   (in either mode)
//! ```
//!
//! The backward pass always treats the mean as the batch's: training is the
//! only place this example back-propagates. After a prediction-mode forward
//! the exact gradient would be `dx = dy` (the running mean is a constant),
//! which this layer does not special-case.
//!
//! Run: `cargo run --release --example centering_norm [DATA_DIR]`

use normlab::data::{self, Batch, Batches, LastBatch};
use normlab::layers::{AvgPool2d, Conv2d, Flatten, Init, Layer, Linear, Mode, Sigmoid, StateMut, StateName};
use normlab::loss::CrossEntropy;
use normlab::models::Sequential;
use normlab::optim::{Sgd, SgdConfig};
use normlab::train::evaluate;
use normlab::{rng, Real, Result, Tensor};

struct CenteringNorm<T: Real> {
    channels: usize,
    running_mean: Tensor<T>,
    batch_mean: Vec<T>,
    y: Tensor<T>,
    dx: Tensor<T>,
}

impl<T: Real> CenteringNorm<T> {
    fn new() -> Self {
        CenteringNorm {
            channels: 0,
            running_mean: Tensor::default(),
            batch_mean: Vec::new(),
            y: Tensor::default(),
            dx: Tensor::default(),
        }
    }
}

impl<T: Real> Layer<T> for CenteringNorm<T> {
    fn kind(&self) -> String {
        "CenteringNorm".into()
    }

    fn build(&mut self, input: &[usize], _rng: &mut rng::Rng) -> Result<Vec<usize>> {
        self.channels = input[0];
        self.running_mean = Tensor::zeros(&[self.channels]);
        Ok(input.to_vec())
    }

    fn forward(&mut self, x: &Tensor<T>, mode: Mode) -> Result<&Tensor<T>> {
        let (n, c) = (x.dim(0), self.channels);
        let s = x.numel() / (n * c);
        if mode == Mode::Train {
            self.batch_mean = vec![T::zero(); c];
            for (i, v) in x.data().iter().enumerate() {
                self.batch_mean[(i / s) % c] += *v;
            }
            let m = T::from_f64((n * s) as f64);
            for (r, b) in self.running_mean.data_mut().iter_mut().zip(self.batch_mean.iter_mut()) {
                *b /= m;
                *r = T::from_f64(0.9) * *r + T::from_f64(0.1) * *b;
            }
        } else {
            self.batch_mean = self.running_mean.data().to_vec();
        }
        self.y.resize(x.shape());
        for (i, (y, v)) in self.y.data_mut().iter_mut().zip(x.data()).enumerate() {
            *y = *v - self.batch_mean[(i / s) % c];
        }
        Ok(&self.y)
    }

    fn backward(&mut self, x: &Tensor<T>, dy: &Tensor<T>, _need_dx: bool) -> Result<&Tensor<T>> {
        // the mean depends on x in training mode: subtract each channel's mean gradient
        let (n, c) = (x.dim(0), self.channels);
        let s = x.numel() / (n * c);
        let mut mean_dy = vec![T::zero(); c];
        for (i, g) in dy.data().iter().enumerate() {
            mean_dy[(i / s) % c] += *g;
        }
        let m = T::from_f64((n * s) as f64);
        self.dx.resize(x.shape());
        for (i, (d, g)) in self.dx.data_mut().iter_mut().zip(dy.data()).enumerate() {
            *d = *g - mean_dy[(i / s) % c] / m;
        }
        Ok(&self.dx)
    }

    fn output(&self) -> &Tensor<T> {
        &self.y
    }
    fn grad_input(&self) -> &Tensor<T> {
        &self.dx
    }
    fn state_mut(&mut self) -> Vec<(StateName, StateMut<'_, T>)> {
        vec![("running_mean".into(), StateMut::Buffer(&mut self.running_mean))]
    }
}

fn main() -> Result<()> {
    // the four Fashion-MNIST files: Debian's dataset-fashion-mnist, or a directory given
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/usr/share/datasets/fashion-mnist".into());
    let mut fm = data::load_dir(dir.as_ref())?;
    fm.train.truncate(10_000);
    fm.test.truncate(2_000);

    let mut rng = rng::seeded(0);
    let mut net = Sequential::<f32>::new()
        .push(Conv2d::new(6, 5).init(Init::XavierUniform))
        .push(CenteringNorm::new())
        .push(Sigmoid::new())
        .push(AvgPool2d::new(2, 2))
        .push(Conv2d::new(16, 5).init(Init::XavierUniform))
        .push(CenteringNorm::new())
        .push(Sigmoid::new())
        .push(AvgPool2d::new(2, 2))
        .push(Flatten::new())
        .push(Linear::new(120).init(Init::XavierUniform))
        .push(CenteringNorm::new())
        .push(Sigmoid::new())
        .push(Linear::new(10).init(Init::XavierUniform));
    net.build(&[1, 28, 28], &mut rng)?;
    println!("{}", net.summary());

    // the chapter's LeNet learning rate: centring alone does not rescue the
    // sigmoid from slow learning the way full batch norm does
    let mut sgd = Sgd::new(SgdConfig::new(0.9))?;
    let mut loss = CrossEntropy::new();
    // shuffled batches of 128, a new order each epoch; the shorter last
    // batch is dropped, so every step centres over 128 examples
    let mut batches = Batches::new(fm.train.len(), 128, LastBatch::Drop)?.shuffled(0);
    let mut batch = Batch::default();
    for epoch in 1..=3 {
        net.train();
        let mut total = 0.0;
        for idx in batches.epoch() {
            batch.fill(&fm.train, idx)?;
            let logits = net.forward(&batch.x)?;
            let (l, _) = loss.forward(logits, &batch.labels)?;
            net.backward(&batch.x, loss.grad())?;
            sgd.step(&mut net);
            total += l;
        }
        let eval = evaluate(&mut net, &fm.test, 500, None)?;
        println!("epoch {epoch}: train loss {:.4}, val acc {:.4}", total / batches.num_batches() as f64, eval.accuracy);
    }
    Ok(())
}
