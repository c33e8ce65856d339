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
//! The layout follows the data flow: [`kernels`] (hot loops) are used by
//! [`layers`] (forward and backward side by side), used by [`models`], used
//! by [`train`], used by the `normlab` command line. [`data`] reads
//! Fashion-MNIST; [`threads`] keeps the thread pool ready between the
//! parallel layers of a model; [`aligned`] is the 64-byte-aligned buffer
//! under every [`Tensor`].

pub mod aligned;
pub mod bench;
pub mod data;
pub mod error;
pub mod experiments;
pub mod fsutil;
pub mod kernels;
pub mod layers;
pub mod loss;
pub mod models;
pub mod optim;
pub mod real;
pub mod rng;
pub mod tensor;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
pub use real::Real;
pub use tensor::Tensor;
