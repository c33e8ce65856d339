//! `normlab bench --suite`: networks other than the chapter's, each built
//! with the public API as a user would write it, timed for one SGD step
//! and set against the FMA peak measured in the same run.
//!
//! - `bn-lenet`: the chapter's network (batch 128, 1x28x28).
//! - `vgg-bn`: 3x3 convolutions with padding 1 (32, 32, 64, 64, 128
//!   channels), BN and ReLU after each, 2x2 max-pooling, then
//!   Linear(256)-BN1d-ReLU-Linear(10) (batch 128, 1x28x28).
//! - `resnet-bn`: a small ResNet on 3x32x32 (batch 64): a 3x3 stem of 16
//!   channels with BN and ReLU, then three basic blocks (conv-BN-ReLU-conv-BN
//!   plus the shortcut, then ReLU) of 16, 32 (stride 2) and 64 (stride 2)
//!   channels, a 1x1 convolution + BN shortcut where the shape changes,
//!   global average pooling and Linear(10).
//! - `mlp-bn`: the BN paper's MNIST network, three hidden layers of 100
//!   sigmoid units with BN after each affine layer (batch 60, 784 inputs).
//!
//! FLOPs count the multiply-adds of the convolutions and linear layers:
//! `2·MACs` forward, three times that for a step (forward, input gradient,
//! weight gradient), the normalizations and activations left out, so the
//! rate is a lower bound of the arithmetic done.

use serde::Serialize;

use normlab::layers::{AvgPool2d, BatchNorm, BatchNormConfig, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid};
use normlab::loss::CrossEntropy;
use normlab::models::{self, Residual, Sequential};
use normlab::optim::{Sgd, SgdConfig};
use normlab::rng;
use normlab::Result;

use super::{random, time_median};

/// One network's training step.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteTiming {
    /// The network's name (`bn-lenet`, `vgg-bn`, `mlp-bn`).
    pub network: String,
    /// The instruction set the kernels ran with.
    pub isa: String,
    /// Examples per step.
    pub batch: usize,
    /// One example's shape.
    pub input: Vec<usize>,
    /// Median milliseconds per SGD step (forward, loss, backward, update).
    pub step_ms: f64,
    /// Training examples per second.
    pub examples_per_sec: f64,
    /// `6·MACs` of the convolutions and linear layers per step.
    pub gflop_per_step: f64,
    /// GFLOP/s achieved.
    pub gflops: f64,
    /// Of the FMA peak measured in the same run.
    pub fraction_of_peak: f64,
}

/// A suite network (unbuilt), its batch, one example's shape, and the multiply-adds
/// of one example's forward pass through its convolutions and linear
/// layers (counted as the network is put together).
pub fn network(name: &str) -> Result<(Sequential<f32>, usize, Vec<usize>, f64)> {
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    Ok(match name {
        // conv 1->6 on 24x24, conv 6->16 on 8x8, 256->120->84->10
        "bn-lenet" => {
            let macs = 576.0 * 6.0 * 25.0 + 64.0 * 16.0 * 150.0 + (256.0 * 120.0 + 120.0 * 84.0 + 84.0 * 10.0);
            // unbuilt, as the others: the caller builds it (fused or not)
            (models::ModelKind::BnLenet.config().network()?, 128, vec![1, 28, 28], macs)
        }
        "vgg-bn" => {
            let (mut net, mut side, mut cin, mut macs) = (Sequential::new(), 28usize, 1usize, 0.0);
            for (channels, pool) in [(32, false), (32, true), (64, false), (64, true), (128, true)] {
                macs += (side * side * channels * cin * 9) as f64;
                net = net.push(Conv2d::new(channels, 3).padding(1)).push(bn()).push(ReLU::new());
                if pool {
                    net = net.push(MaxPool2d::new(2, 2));
                    side /= 2;
                }
                cin = channels;
            }
            macs += (side * side * cin * 256 + 256 * 10) as f64;
            let net =
                net.push(Flatten::new()).push(Linear::new(256)).push(bn()).push(ReLU::new()).push(Linear::new(10));
            (net, 128, vec![1, 28, 28], macs)
        }
        "resnet-bn" => {
            let conv = |c: usize, k: usize, stride: usize| Conv2d::new(c, k).stride(stride).padding(k / 2).bias(false);
            let mut net = Sequential::new().push(conv(16, 3, 1)).push(bn()).push(ReLU::new());
            let (mut side, mut cin) = (32usize, 16usize);
            let mut macs = (side * side * 16 * 3 * 9) as f64;
            for (cout, stride) in [(16, 1), (32, 2), (64, 2)] {
                side /= stride;
                let body = Sequential::new()
                    .push(conv(cout, 3, stride))
                    .push(bn())
                    .push(ReLU::new())
                    .push(conv(cout, 3, 1))
                    .push(bn());
                macs += (side * side * cout * (cin + cout) * 9) as f64;
                let block = if stride != 1 || cin != cout {
                    macs += (side * side * cout * cin) as f64;
                    Residual::with_shortcut(body, Sequential::new().push(conv(cout, 1, stride)).push(bn()))
                } else {
                    Residual::new(body)
                };
                net = net.push(block).push(ReLU::new());
                cin = cout;
            }
            macs += (cin * 10) as f64;
            let net = net.push(AvgPool2d::new(side, side)).push(Flatten::new()).push(Linear::new(10));
            (net, 64, vec![3, 32, 32], macs)
        }
        "mlp-bn" => {
            let mut net = Sequential::new().push(Flatten::new());
            for _ in 0..3 {
                net = net.push(Linear::new(100)).push(bn()).push(Sigmoid::new());
            }
            (net.push(Linear::new(10)), 60, vec![1, 28, 28], 784.0 * 100.0 + 2.0 * 100.0 * 100.0 + 100.0 * 10.0)
        }
        other => unreachable!("no suite network {other}"),
    })
}

/// The suite's network names, in the order they are timed.
pub const NETWORKS: [&str; 4] = ["bn-lenet", "vgg-bn", "resnet-bn", "mlp-bn"];

/// Times one SGD step of each network of `networks` (names from
/// [`NETWORKS`]), against `peak_gflops`.
pub fn run(peak_gflops: f64, budget: f64, networks: &[String]) -> Result<Vec<SuiteTiming>> {
    let mut out = Vec::new();
    for name in networks {
        let name = name.as_str();
        let mut rng = rng::seeded(0);
        let (mut net, batch, input, macs) = network(name)?;
        net.build(&input, &mut rng)?;
        let mut shape = vec![batch];
        shape.extend(&input);
        let x = random(&shape, &mut rng);
        let labels: Vec<usize> = (0..batch).map(|i| i % 10).collect();
        let gflop_per_step = 6.0 * macs * batch as f64 / 1e9;
        let mut loss = CrossEntropy::new();
        let mut sgd = Sgd::new(SgdConfig::new(0.01))?;
        let mut failure = None;
        let secs = time_median(budget, || {
            normlab::threads::keep_pool_awake(|| {
                let step = (|| -> Result<()> {
                    let logits = net.forward(&x)?;
                    loss.forward(logits, &labels)?;
                    net.backward(&x, loss.grad())?;
                    sgd.step(&mut net);
                    Ok(())
                })();
                if let Err(e) = step {
                    failure.get_or_insert(e);
                }
            })
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let gflops = gflop_per_step / secs;
        out.push(SuiteTiming {
            network: name.into(),
            isa: normlab::isa::active().name().into(),
            batch,
            input,
            step_ms: secs * 1e3,
            examples_per_sec: batch as f64 / secs,
            gflop_per_step,
            gflops,
            fraction_of_peak: gflops / peak_gflops,
        });
    }
    Ok(out)
}
