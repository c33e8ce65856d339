//! # normlab
//!
//! Batch normalization and layer normalization done as PyTorch users expect,
//! and small convolutional networks trained fast on the CPU: the "Batch
//! Normalization" chapter of *Dive into Deep Learning*, reproducible.
//!
//! ```
//! use normlab::{loss::CrossEntropy, models, optim::{Sgd, SgdConfig}, rng, Tensor};
//! let mut rng = rng::seeded(0);
//! let mut net = models::bn_lenet::<f32>(&mut rng).unwrap();     // the chapter's BNLeNet
//! let x = Tensor::full(&[4, 1, 28, 28], 0.5);                   // a batch of 4 images
//! let labels = [0, 1, 2, 3];
//! let mut loss = CrossEntropy::new();
//! let mut sgd = Sgd::new(SgdConfig::new(0.1)).unwrap();
//! let logits = net.forward(&x).unwrap();                         // training mode: batch statistics
//! let (l, _correct) = loss.forward(logits, &labels).unwrap();
//! net.backward(&x, loss.grad()).unwrap();
//! sgd.step(&mut net);
//! assert!(l.is_finite());
//! ```
//!
//! The layout follows the data flow: the kernels (hot loops, private) are
//! used by [`layers`] (forward and backward side by side), used by
//! [`models`], used by [`train`] (the loop, evaluation, checkpoints), used by
//! the `normlab` command line (the `normlab-cli` crate). [`data`] reads
//! Fashion-MNIST from a directory; [`loss`] and [`optim`] are what a
//! training step needs beside the model.

#![warn(missing_docs)]

#[doc(hidden)] // a 64-byte-aligned buffer under every Tensor; not part of the API
pub mod aligned;
pub mod data;
pub mod error;
#[doc(hidden)] // atomic file writes, public only for the normlab-cli crate
pub mod fsutil;
#[doc(hidden)] // the hot loops, public only for the profiling probes in dev/ and the benches
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod models;
pub mod optim;
pub mod real;
pub mod rng;
pub mod tensor;
#[doc(hidden)] // keeps the thread pool awake between layers, public only for normlab-cli's bench
pub mod threads;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;
pub use tensor::Tensor;
