//! Saving a run's whole state and continuing it exactly: the model, SGD's
//! momentum buffers, the random streams, the options and the history.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{checkpoint, TrainOptions, Trainer};
use crate::fsutil::write_atomic;
use crate::layers::StateMut;
use crate::rng::Rng;
use crate::{Error, Result};

/// Metadata keys of a training checkpoint.
const META_OPTIONS: &str = "normlab.train_options";
const META_HISTORY: &str = "normlab.history";
const META_SHUFFLE_RNG: &str = "normlab.shuffle_rng";
const META_LAYER_RNGS: &str = "normlab.layer_rngs";
const MOMENTUM_PREFIX: &str = "optim.momentum_buffer.";

impl Trainer {
    /// Everything needed to continue exactly where this run is: the model's
    /// state, SGD's momentum buffers, the shuffling and dropout random
    /// streams, the options and the metrics so far. Written atomically.
    pub fn save_state(&mut self, path: &Path) -> Result<()> {
        self.save_state_with(path, &[])
    }

    /// [`Trainer::save_state`] with `extra` metadata entries beside the
    /// run's own (what an application records about the run, such as the
    /// data it trains on); [`Trainer::resume_with_metadata`] gives them back.
    pub fn save_state_with(&mut self, path: &Path, extra: &[(&str, String)]) -> Result<()> {
        let buffers: Vec<checkpoint::ExtraTensor> = self
            .sgd
            .momentum_buffers()
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("{MOMENTUM_PREFIX}{i:04}"), vec![b.len()], b.clone()))
            .collect();
        let layer_rngs: Vec<Rng> = self.net.layers_mut().iter_mut().filter_map(|l| l.rng_mut().cloned()).collect();
        let mut meta = vec![
            ("epoch", self.epoch().to_string()),
            (META_OPTIONS, to_json(&self.options, path)?),
            (META_HISTORY, to_json(&self.history, path)?),
            (META_SHUFFLE_RNG, to_json(&self.shuffle_rng, path)?),
            (META_LAYER_RNGS, to_json(&layer_rngs, path)?),
        ];
        meta.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let bytes =
            checkpoint::to_bytes_with(&mut self.net, &self.options.model, &self.options.network, &meta, &buffers)?;
        write_atomic(path, &bytes)
    }

    /// Continues a run from [`Trainer::save_state`]'s file.
    pub fn resume(path: &Path) -> Result<Self> {
        Ok(Self::resume_with_metadata(path)?.0)
    }

    /// [`Trainer::resume`], and every metadata entry of the file (the
    /// `extra` entries of [`Trainer::save_state_with`] among them).
    pub fn resume_with_metadata(path: &Path) -> Result<(Self, HashMap<String, String>)> {
        let info = checkpoint::info(path)?;
        let get = |key: &str| {
            info.metadata.get(key).ok_or_else(|| {
                Error::checkpoint(path, format!("no '{key}' in the metadata: not a training checkpoint (checkpoint.safetensors) written by `normlab train`"))
            })
        };
        let parse_err =
            |key: &str, e: serde_json::Error| Error::checkpoint(path, format!("metadata '{key}' is damaged: {e}"));
        let options: TrainOptions = serde_json::from_str(get(META_OPTIONS)?).map_err(|e| parse_err(META_OPTIONS, e))?;
        let mut trainer = Trainer::new(options)?;
        let (_, extras) = checkpoint::load_with_extras(&mut trainer.net, path, MOMENTUM_PREFIX)?;
        trainer.history = serde_json::from_str(get(META_HISTORY)?).map_err(|e| parse_err(META_HISTORY, e))?;
        trainer.shuffle_rng =
            serde_json::from_str(get(META_SHUFFLE_RNG)?).map_err(|e| parse_err(META_SHUFFLE_RNG, e))?;
        let rngs: Vec<Rng> = serde_json::from_str(get(META_LAYER_RNGS)?).map_err(|e| parse_err(META_LAYER_RNGS, e))?;
        let mut rngs = rngs.into_iter();
        for layer in trainer.net.layers_mut() {
            if let Some(r) = layer.rng_mut() {
                *r = rngs
                    .next()
                    .ok_or_else(|| Error::checkpoint(path, "fewer dropout random streams than dropout layers"))?;
            }
        }
        let sizes: Vec<usize> = trainer
            .net
            .state_mut()
            .into_iter()
            .filter_map(|(_, s)| if let StateMut::Param { value, .. } = s { Some(value.numel()) } else { None })
            .collect();
        if !extras.is_empty() {
            if extras.len() != sizes.len() || extras.iter().zip(&sizes).any(|(e, &n)| e.2.len() != n) {
                return Err(Error::checkpoint(
                    path,
                    "the optimizer's momentum buffers do not match the model's parameters",
                ));
            }
            trainer.sgd.set_momentum_buffers(extras.into_iter().map(|e| e.2).collect());
        }
        Ok((trainer, info.metadata))
    }
}

/// JSON of plain data (numbers, strings, vectors): serde_json cannot fail
/// on it, but an error is still reported rather than a panic.
fn to_json<V: Serialize>(v: &V, path: &Path) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::checkpoint(path, format!("cannot record the run's state: {e}")))
}
