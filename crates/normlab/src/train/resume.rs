//! Saving a run's whole state and continuing it exactly: the model, the
//! optimizer's state (SGD's momentum buffers, AdamW's moments and step
//! count), the random streams, the options and the history.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{checkpoint, TrainOptions, Trainer};
use crate::fsutil::write_atomic;
use crate::layers::StateMut;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::{Error, Result};

/// Metadata keys of a training checkpoint.
const META_OPTIONS: &str = "normlab.train_options";
const META_HISTORY: &str = "normlab.history";
const META_SHUFFLE_RNG: &str = "normlab.shuffle_rng";
const META_LAYER_RNGS: &str = "normlab.layer_rngs";
const META_AUGMENT_RNG: &str = "normlab.augment_rng";
const META_OPTIMIZER_STEPS: &str = "normlab.optimizer_steps";
/// Every optimizer tensor's prefix (passed over when a checkpoint is loaded as a model).
const OPTIMIZER_PREFIX: &str = "optim.";
const MOMENTUM_PREFIX: &str = "optim.momentum_buffer.";
const EXP_AVG_PREFIX: &str = "optim.exp_avg.";
const EXP_AVG_SQ_PREFIX: &str = "optim.exp_avg_sq.";

/// One optimizer tensor per parameter, named `prefix` and its index.
fn numbered(prefix: &str, buffers: &[Vec<f32>]) -> Vec<checkpoint::ExtraTensor> {
    buffers.iter().enumerate().map(|(i, b)| (format!("{prefix}{i:04}"), vec![b.len()], b.clone())).collect()
}

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
        if !self.is_described() {
            return Err(Error::config(
                "training checkpoint",
                "the network was built in code (Trainer::with_network), so a checkpoint could not rebuild it; \
                 describe it as a ModelSpec and use Trainer::new, or save its weights with checkpoint::save_state_dict",
            ));
        }
        let mut optimizer_meta = Vec::new();
        let buffers: Vec<checkpoint::ExtraTensor> = match &self.optimizer {
            Optimizer::Sgd(sgd) => numbered(MOMENTUM_PREFIX, sgd.momentum_buffers()),
            Optimizer::AdamW(adamw) => {
                optimizer_meta.push((META_OPTIMIZER_STEPS, adamw.steps().to_string()));
                let (m, v) = adamw.moments();
                let mut all = numbered(EXP_AVG_PREFIX, m);
                all.extend(numbered(EXP_AVG_SQ_PREFIX, v));
                all
            }
        };
        let layer_rngs: Vec<Rng> = self.net.layers_mut().iter_mut().filter_map(|l| l.rng_mut().cloned()).collect();
        let mut meta = vec![
            ("epoch", self.epoch().to_string()),
            (META_OPTIONS, to_json(&self.options, path)?),
            (META_HISTORY, to_json(&self.history, path)?),
            (META_SHUFFLE_RNG, to_json(&self.shuffle_rng, path)?),
            (META_LAYER_RNGS, to_json(&layer_rngs, path)?),
        ];
        if !self.options.augment.is_none() {
            meta.push((META_AUGMENT_RNG, to_json(&self.augment_rng, path)?));
        }
        meta.extend(optimizer_meta);
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
        let (_, extras) = checkpoint::load_with_extras(&mut trainer.net, path, OPTIMIZER_PREFIX)?;
        trainer.history = serde_json::from_str(get(META_HISTORY)?).map_err(|e| parse_err(META_HISTORY, e))?;
        // epochs recorded before schedules existed ran at the base rate
        let base_lr = trainer.options.sgd.lr;
        trainer.history.iter_mut().filter(|m| m.lr.is_none()).for_each(|m| m.lr = Some(base_lr));
        if let Some(text) = info.metadata.get(META_AUGMENT_RNG) {
            trainer.augment_rng = serde_json::from_str(text).map_err(|e| parse_err(META_AUGMENT_RNG, e))?;
        } else if !trainer.options.augment.is_none() && !trainer.history.is_empty() {
            return Err(Error::checkpoint(path, format!("no '{META_AUGMENT_RNG}' in the metadata of a run with augmentation; the file was edited or damaged")));
        }
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
        // the tensors of one kind, in parameter order, checked against the parameters' sizes
        let take = |prefix: &str| -> Result<Vec<Vec<f32>>> {
            let found: Vec<Vec<f32>> = extras.iter().filter(|e| e.0.starts_with(prefix)).map(|e| e.2.clone()).collect();
            if !found.is_empty() && (found.len() != sizes.len() || found.iter().zip(&sizes).any(|(e, &n)| e.len() != n))
            {
                return Err(Error::checkpoint(
                    path,
                    format!("the optimizer's tensors {prefix}* do not match the model's parameters"),
                ));
            }
            Ok(found)
        };
        let known = [MOMENTUM_PREFIX, EXP_AVG_PREFIX, EXP_AVG_SQ_PREFIX];
        if let Some(e) = extras.iter().find(|e| !known.iter().any(|p| e.0.starts_with(p))) {
            return Err(Error::checkpoint(path, format!("unexpected optimizer tensor '{}'", e.0)));
        }
        match &mut trainer.optimizer {
            Optimizer::Sgd(sgd) => {
                if extras.iter().any(|e| !e.0.starts_with(MOMENTUM_PREFIX)) {
                    return Err(Error::checkpoint(
                        path,
                        "AdamW state in the checkpoint of an SGD run; the file was edited or damaged",
                    ));
                }
                let buffers = take(MOMENTUM_PREFIX)?;
                if !buffers.is_empty() {
                    sgd.set_momentum_buffers(buffers);
                }
            }
            Optimizer::AdamW(adamw) => {
                let (m, v) = (take(EXP_AVG_PREFIX)?, take(EXP_AVG_SQ_PREFIX)?);
                let steps: u64 = match info.metadata.get(META_OPTIMIZER_STEPS) {
                    Some(t) => t.parse().map_err(|e| {
                        Error::checkpoint(path, format!("metadata '{META_OPTIMIZER_STEPS}' is damaged: {e}"))
                    })?,
                    None => 0,
                };
                if (m.is_empty() || v.is_empty() || steps == 0) != (m.is_empty() && v.is_empty() && steps == 0) {
                    return Err(Error::checkpoint(
                        path,
                        "AdamW's state is incomplete (moments or step count missing); the file was edited or damaged",
                    ));
                }
                if steps > 0 {
                    adamw.set_state(steps, m, v);
                }
            }
        }
        Ok((trainer, info.metadata))
    }
}

/// JSON of plain data (numbers, strings, vectors): serde_json cannot fail
/// on it, but an error is still reported rather than a panic.
fn to_json<V: Serialize>(v: &V, path: &Path) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::checkpoint(path, format!("cannot record the run's state: {e}")))
}
