//! Population statistics for batch norm after training ("precise BN").

use super::fill_batch;
use crate::data::Split;
use crate::layers::{Mode, Momentum};
use crate::models::Sequential;
use crate::tensor::Tensor;
use crate::Result;

/// Recomputes every batch-norm layer's running statistics over `data` as
/// the exact average of the batch statistics (PyTorch's
/// `torch.optim.swa_utils.update_bn`, "precise BN"): running stats reset,
/// momentum set to a cumulative average for the pass, then restored.
/// Returns the number of BN layers updated.
pub fn recompute_bn_stats(net: &mut Sequential<f32>, data: &Split, batch_size: usize) -> Result<usize> {
    let mut saved = Vec::new();
    // every BN, those inside blocks (a residual block's) included
    for bn in net.layers_mut().iter_mut().flat_map(|l| l.batch_norms_mut()) {
        saved.push(bn.config().momentum);
        bn.reset_running_stats();
        bn.set_momentum(Momentum::CumulativeAverage);
    }
    if saved.is_empty() {
        return Ok(0);
    }
    let mode = net.mode();
    net.set_mode(Mode::Train);
    let (mut x, mut labels) = (Tensor::default(), Vec::new());
    let indices: Vec<usize> = (0..data.len()).collect();
    let mut result = Ok(());
    for idx in indices.chunks(batch_size) {
        if idx.len() < 2 {
            continue;
        }
        fill_batch(data, idx, &mut x, &mut labels);
        if let Err(e) = net.forward(&x) {
            result = Err(e);
            break;
        }
    }
    net.set_mode(mode);
    let bns = net.layers_mut().iter_mut().flat_map(|l| l.batch_norms_mut());
    for (bn, &momentum) in bns.zip(&saved) {
        bn.set_momentum(momentum);
    }
    result.map(|_| saved.len())
}
