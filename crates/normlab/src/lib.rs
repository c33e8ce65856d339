//! # normlab
//!
//! ```
//! use normlab::{loss::CrossEntropy, models, optim::{Sgd, SgdConfig}, rng, Tensor};
//! let mut net = models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap(); // the chapter's BNLeNet
//! let (mut loss, mut sgd) = (CrossEntropy::new(), Sgd::new(SgdConfig::new(0.1)).unwrap());
//! let x = Tensor::full(&[4, 1, 28, 28], 0.5); // 4 grey images, NCHW
//! let logits = net.forward(&x).unwrap(); // training mode: BN uses the batch statistics
//! let (l, _correct) = loss.forward(logits, &[0, 1, 2, 3]).unwrap();
//! net.backward(&x, loss.grad()).unwrap();
//! sgd.step(&mut net);
//! assert!(l.is_finite());
//! ```
//!
//! Batch normalization and layer normalization that behave as PyTorch users
//! expect, and small convolutional networks trained fast on the CPU: the
//! "Batch Normalization" chapter of *Dive into Deep Learning*, reproducible.
//!
//! Which module does what, in the order the data flows:
//!
//! - [`layers`]: the layers (convolution, linear, batch/layer/group norm,
//!   activations, pooling), each with its forward and backward pass side by side.
//! - [`models`]: [`models::Sequential`] and the chapter's LeNet family.
//! - [`train`]: the training loop, evaluation in prediction mode, checkpoints.
//! - [`data`]: Fashion-MNIST read from a directory of IDX files.
//! - [`loss`]: mean softmax cross-entropy; [`optim`]: SGD with PyTorch's semantics.
//! - [`Tensor`], [`Real`] (f32 or f64), [`Error`] and [`rng`] are shared by all of them.
//!
//! The hot loops (`kernels`) are internal: they are public only so that
//! the profiling probes in `dev/` can time them, and hidden from these docs.
//! The `normlab` command line lives in the `normlab-cli` crate.

#![warn(missing_docs)]

// A 64-byte-aligned buffer under every Tensor; private: nothing outside
// the library uses it and no public signature names it.
mod aligned;
pub mod data;
pub mod error;
#[doc(hidden)] // atomic file writes, public only for the normlab-cli crate
pub mod fsutil;
pub mod isa;
#[doc(hidden)] // the hot loops, public only for the profiling probes in dev/
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod models;
pub mod optim;
pub mod real;
pub mod rng;
pub mod tensor;
#[doc(hidden)] // keeps the thread pool awake between layers, public only for normlab-cli's bench and the dev/ probes
pub mod threads;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;
pub use tensor::Tensor;
