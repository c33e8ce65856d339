//! `Sequential::predict`: a large batch in chunks through the whole network
//! gives every example bitwise the output of one eval-mode `forward`, for
//! the built-in LeNets, a residual network with strided and 1x1 shortcut
//! convolutions, and a VGG-style one; it runs in eval mode from training
//! mode without touching the running statistics; and it keeps nothing for
//! `backward`.

use normlab::layers::{AvgPool2d, BatchNorm, BatchNormConfig, Conv2d, Flatten, Linear, MaxPool2d, ReLU, StateMut};
use normlab::models::{self, ModelKind, Residual, Sequential};
use normlab::{rng, Tensor};

fn values(shape: &[usize], seed: usize) -> Tensor<f32> {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 700.0).collect())
        .unwrap()
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

fn buffers(net: &mut Sequential<f32>) -> Vec<u32> {
    let mut out = Vec::new();
    for (_, s) in net.state_mut() {
        if let StateMut::Buffer(v) = s {
            out.extend(v.data().iter().map(|f| f.to_bits()));
        }
    }
    out
}

fn residual_net() -> Sequential<f32> {
    let conv = |c: usize, k: usize, s: usize| Conv2d::new(c, k).stride(s).padding(k / 2).bias(false);
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    let body = |c: usize, s: usize| {
        Sequential::new().push(conv(c, 3, s)).push(bn()).push(ReLU::new()).push(conv(c, 3, 1)).push(bn())
    };
    Sequential::new()
        .push(conv(16, 3, 1))
        .push(bn())
        .push(ReLU::new())
        .push(Residual::new(body(16, 1)))
        .push(ReLU::new())
        .push(Residual::with_shortcut(body(32, 2), Sequential::new().push(conv(32, 1, 2)).push(bn())))
        .push(ReLU::new())
        .push(AvgPool2d::new(8, 8))
        .push(Flatten::new())
        .push(Linear::new(10))
}

fn vgg_net() -> Sequential<f32> {
    let bn = || BatchNorm::new(BatchNormConfig::pytorch());
    Sequential::new()
        .push(Conv2d::new(32, 3).padding(1))
        .push(bn())
        .push(ReLU::new())
        .push(MaxPool2d::new(2, 2))
        .push(Conv2d::new(64, 3).padding(1))
        .push(bn())
        .push(ReLU::new())
        .push(MaxPool2d::new(2, 2))
        .push(Flatten::new())
        .push(Linear::new(10))
}

/// Two training-mode passes move the running statistics away from their
/// initial values; then `predict` on a batch of at least two chunks plus a
/// ragged one must equal `forward` in eval mode bit for bit.
fn check(what: &str, mut net: Sequential<f32>, example: &[usize]) {
    let threads = rayon::current_num_threads();
    for seed in 0..2 {
        let mut shape = vec![8];
        shape.extend(example);
        net.forward(&values(&shape, 10 + seed)).unwrap();
    }
    let chunk = net.prediction_chunk(threads);
    let batch = 2 * chunk + 3;
    let mut shape = vec![batch];
    shape.extend(example);
    let x = values(&shape, 1);

    // from training mode: eval-mode outputs, running statistics untouched
    let stats = buffers(&mut net);
    let predicted = bits(net.predict(&x).unwrap());
    assert_eq!(buffers(&mut net), stats, "{what}: predict changed the running statistics");
    net.eval();
    let whole = bits(net.forward(&x).unwrap());
    assert_eq!(predicted.len(), whole.len(), "{what}");
    let per = whole.len() / batch;
    for (k, (p, w)) in predicted.chunks(per).zip(whole.chunks(per)).enumerate() {
        assert_eq!(p, w, "{what}: example {k} of {batch} (chunks of {chunk}) differs from one eval-mode pass");
    }
    // a batch of one chunk runs in one pass: the same values again
    let small = values(&[&[chunk][..], example].concat(), 1);
    assert_eq!(bits(net.predict(&small).unwrap()), whole[..chunk * per], "{what}: one chunk");
}

#[test]
fn chunked_prediction_is_bitwise_one_eval_pass() {
    for kind in ModelKind::ALL {
        let net = models::build::<f32>(kind, &mut rng::seeded(2)).unwrap();
        check(kind.name(), net, &[1, 28, 28]);
    }
    let mut net = residual_net();
    net.build(&[3, 16, 16], &mut rng::seeded(3)).unwrap();
    check("residual", net, &[3, 16, 16]);
    let mut net = vgg_net();
    net.build(&[1, 16, 16], &mut rng::seeded(4)).unwrap();
    check("vgg", net, &[1, 16, 16]);
}

#[test]
fn predict_keeps_nothing_for_backward_and_refuses_wrong_shapes() {
    let mut net = residual_net();
    net.build(&[3, 16, 16], &mut rng::seeded(3)).unwrap();
    let chunk = net.prediction_chunk(rayon::current_num_threads());
    let x = values(&[2 * chunk, 3, 16, 16], 1);
    let y = net.predict(&x).unwrap().clone();
    let e = net.backward(&x, &y).unwrap_err().to_string();
    assert!(e.contains("predict()") && e.contains("forward()"), "{e}");
    // forward() makes backward possible again
    net.forward(&x).unwrap();
    net.backward(&x, &y).unwrap();
    for shape in [vec![2 * chunk, 3, 16, 15], vec![2 * chunk, 3 * 16 * 16], vec![2 * chunk, 4, 16, 16]] {
        let e = net.predict(&values(&shape, 2)).unwrap_err().to_string();
        assert!(e.contains("net.0") || e.contains("shape") || e.contains("channel"), "{shape:?}: {e}");
    }
}
