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
    // every batch of one is skipped (no batch statistics), and with none
    // left the statistics would be reset to 0 and 1 and reported as done
    if data.len() < 2 || batch_size < 2 {
        return Err(crate::Error::config(
            "recompute BN statistics",
            format!(
                "{} examples in batches of {batch_size}: batch statistics need batches of 2 or more examples",
                data.len()
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::bn_lenet;

    /// One image, or batches of one, give no batch statistics: refused,
    /// with the running statistics left as they were (once they were reset
    /// to 0 and 1 and the call reported one BN layer per layer done).
    #[test]
    fn too_little_data_is_refused_and_changes_nothing() {
        let mut net = bn_lenet::<f32>(&mut crate::rng::seeded(0)).unwrap();
        let before: Vec<Vec<f32>> = net.state_mut().into_iter().map(|(_, s)| state_values(s)).collect();
        let split =
            |n: usize| Split { images: vec![128; n * 784], labels: vec![0; n], channels: 1, rows: 28, cols: 28 };
        for (data, batch) in [(split(1), 128), (split(50), 1)] {
            let err = recompute_bn_stats(&mut net, &data, batch).unwrap_err().to_string();
            assert!(err.contains("batches of 2 or more"), "{err}");
        }
        let after: Vec<Vec<f32>> = net.state_mut().into_iter().map(|(_, s)| state_values(s)).collect();
        assert_eq!(before, after);
        // and two images are enough
        assert_eq!(recompute_bn_stats(&mut net, &split(2), 128).unwrap(), 4);
    }

    fn state_values(s: crate::layers::StateMut<'_, f32>) -> Vec<f32> {
        use crate::layers::StateMut;
        match s {
            StateMut::Param { value, .. } | StateMut::Buffer(value) => value.data().to_vec(),
            StateMut::Count(c) => vec![*c as f32],
        }
    }
}
