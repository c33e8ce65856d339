//! What a run's checkpoint records beyond its [`TrainOptions`], and the
//! checks that keep `--resume` honest: the options given with it must
//! agree with the record, and the data must be the data the run trained on.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use normlab::data::{FashionMnist, Split};
use normlab::optim::OptimizerKind;
use normlab::train::{Augment, TrainOptions};
use normlab::{Error, Result};

use super::TrainArgs;
use crate::locate::DataChoice;

/// Metadata key of the [`RunRecord`] in checkpoint.safetensors. Checkpoints
/// written before it existed lack it: see [`RunRecord::read`].
pub const META_RECORD: &str = "normlab.run_record";

/// The data a run trains and validates on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The directory it was read from (absolute where it could be made so).
    #[serde(with = "exact_path")]
    pub dir: PathBuf,
    pub train_examples: usize,
    pub test_examples: usize,
    /// SHA-256 of the decoded images and labels of both splits: the same
    /// data compressed or not, or copied elsewhere, has the same sum.
    pub sha256: String,
    /// `--dataset`: `fashion-mnist` (in records written before the choice
    /// existed, too), `mnist`, `kmnist` or `image-folder`.
    #[serde(default = "fashion_mnist")]
    pub dataset: String,
    /// The class names, indexed by label (absent in older records: Fashion-MNIST's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_names: Option<Vec<String>>,
}

fn fashion_mnist() -> String {
    "fashion-mnist".to_string()
}

impl DataRecord {
    pub fn of(fm: &FashionMnist, choice: DataChoice) -> Self {
        DataRecord {
            dir: std::fs::canonicalize(&fm.dir).unwrap_or_else(|_| fm.dir.clone()),
            train_examples: fm.train.len(),
            test_examples: fm.test.len(),
            sha256: data_sha256(fm),
            dataset: choice.name().to_string(),
            class_names: Some(fm.class_names.clone()),
        }
    }
}

/// A path saved exactly: as text where it is UTF-8, else (`NORMLAB_DATA`
/// may name any directory) as its bytes, so a resume finds the same one.
mod exact_path {
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => Repr::Text(text.to_string()),
            #[cfg(unix)]
            None => Repr::Bytes(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec()),
            #[cfg(not(unix))]
            None => Repr::Text(path.to_string_lossy().into_owned()),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => PathBuf::from(text),
            #[cfg(unix)]
            Repr::Bytes(bytes) => PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes)),
            #[cfg(not(unix))]
            Repr::Bytes(bytes) => PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()),
        })
    }
}

fn data_sha256(fm: &FashionMnist) -> String {
    let mut h = Sha256::new();
    let mut split = |s: &Split| {
        for part in [&s.images, &s.labels] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    };
    split(&fm.train);
    split(&fm.test);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What shapes a run besides its [`TrainOptions`] (model, epochs, batch
/// size, every SGD option, seed, limits): its data, and whether the BN
/// statistics are recomputed at the end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub data: DataRecord,
    pub recompute_stats: bool,
}

impl RunRecord {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a record of strings and numbers serializes")
    }

    /// The record in a checkpoint's metadata; `None` for a checkpoint
    /// written before normlab kept one (its data and `--recompute-stats`
    /// are then unknown).
    pub fn read(checkpoint: &Path, metadata: &std::collections::HashMap<String, String>) -> Result<Option<Self>> {
        metadata
            .get(META_RECORD)
            .map(|s| {
                serde_json::from_str(s).map_err(|e| {
                    Error::checkpoint(
                        checkpoint,
                        format!("metadata '{META_RECORD}' is damaged ({e}); the run cannot be resumed"),
                    )
                })
            })
            .transpose()
    }
}

/// Refuses every option given with `--resume` that differs from what the
/// run in `dir` recorded, naming them all; an option equal to the record
/// is fine. `--epochs` is checked by the caller, the data by [`resume_data`].
pub fn check_options(args: &TrainArgs, dir: &Path, o: &TrainOptions, record: Option<&RunRecord>) -> Result<()> {
    let mut names: Vec<&str> = Vec::new();
    let mut given: Vec<String> = Vec::new();
    let mut recorded: Vec<String> = Vec::new();
    let mut differ = |name: &'static str, g: Option<String>, r: Option<String>| {
        if let Some(g) = g {
            if Some(&g) != r.as_ref() {
                names.push(name);
                given.push(format!("{name} {g}"));
                recorded.push(r.map_or(format!("no {name}"), |r| format!("{name} {r}")));
            }
        }
    };
    let show = |v: f64| format!("{v:?}");
    let source = super::ModelSource::of(args);
    let option = if args.preset.is_some() { "--preset" } else { "--model" };
    match &source {
        // a model file or preset agrees when it describes the recorded network
        super::ModelSource::File(_) | super::ModelSource::Preset(..) => {
            let (spec, defaults) = source.read(&o.network.input_shape())?;
            let spec = if spec.input.is_some() { spec } else { spec.with_input(&o.network.input_shape()) };
            let spec = if args.preset.is_some() { spec.with_classes(o.classes) } else { spec };
            // the file's network as this command would train it: BN's momentum
            // and eps from --bn-momentum/--bn-eps or the file's [train] table
            // where given, else the file's own layers' values
            let defaults = defaults.unwrap_or_default();
            let spec = spec.with_batch_norm(args.bn_momentum.or(defaults.bn_momentum), args.bn_eps.or(defaults.bn_eps));
            if spec != o.network.spec() {
                let given = args.preset.clone().or_else(|| args.model.clone());
                differ(option, given, Some(format!("{} (another network)", o.model)));
            }
        }
        super::ModelSource::Builtin(_) => differ("--model", args.model.clone(), Some(o.model.clone())),
    }
    let recorded_set = record.map_or_else(fashion_mnist, |r| r.data.dataset.clone());
    differ("--dataset", args.data.dataset.clone(), Some(recorded_set));
    differ("--channels", args.channels.map(|c| c.to_string()), Some(o.input_shape[0].to_string()));
    differ("--batch-size", args.batch_size.map(|b| b.to_string()), Some(o.batch_size.to_string()));
    differ("--lr", args.lr.map(show), Some(show(o.sgd.lr)));
    differ("--momentum", args.momentum.map(show), Some(show(o.sgd.momentum)));
    differ("--weight-decay", args.weight_decay.map(show), Some(show(o.sgd.weight_decay)));
    differ(
        "--nesterov",
        args.nesterov.then(|| "on".to_string()),
        Some(if o.sgd.nesterov { "on" } else { "off" }.into()),
    );
    differ("--optimizer", args.optimizer.clone(), Some(o.optimizer.name().to_string()));
    let (beta1, beta2, adam_eps) = match o.optimizer {
        OptimizerKind::AdamW { beta1, beta2, eps } => (Some(show(beta1)), Some(show(beta2)), Some(show(eps))),
        OptimizerKind::Sgd => (None, None, None),
    };
    differ("--beta1", args.beta1.map(show), beta1);
    differ("--beta2", args.beta2.map(show), beta2);
    differ("--adam-eps", args.adam_eps.map(show), adam_eps);
    let schedule = &o.schedule;
    differ("--schedule", args.schedule.clone(), Some(schedule.kind.name().to_string()));
    differ("--warmup-epochs", args.warmup_epochs.map(show), schedule.warmup_epochs.map(show));
    differ("--step-size", args.step_size.map(|n| n.to_string()), schedule.step_size.map(|n| n.to_string()));
    differ("--gamma", args.gamma.map(show), Some(show(schedule.gamma)));
    differ("--label-smoothing", args.label_smoothing.map(show), Some(show(o.label_smoothing)));
    // the list as written by the record (crop,flip), a bad one as given
    let augment = args.augment.as_deref().map(|l| {
        super::parse_augment(l)
            .map_or_else(|_| l.to_string(), |(c, f)| Augment { crop_padding: c as usize, hflip: f }.describe())
    });
    differ("--augment", augment, Some(o.augment.describe()));
    differ("--crop-padding", args.crop_padding.map(|n| n.to_string()), Some(o.augment.crop_padding.to_string()));
    let bn = o.network.spec().first_batch_norm();
    let bn_momentum = bn.map(|(m, _)| m.map_or_else(|| "none".to_string(), show));
    differ("--bn-momentum", args.bn_momentum.map(show), bn_momentum);
    differ("--bn-eps", args.bn_eps.map(show), bn.map(|(_, e)| show(e)));
    differ("--seed", args.seed.map(|s| s.to_string()), Some(o.seed.to_string()));
    differ("--limit-train", args.limit_train.map(|n| n.to_string()), o.limit_train.map(|n| n.to_string()));
    differ("--limit-val", args.limit_val.map(|n| n.to_string()), o.limit_val.map(|n| n.to_string()));
    if args.recompute_stats && record.is_some_and(|r| !r.recompute_stats) {
        names.push("--recompute-stats");
        given.push("--recompute-stats".into());
        recorded.push("no --recompute-stats".into());
    }
    if names.is_empty() {
        return Ok(());
    }
    Err(Error::config(
        names.join(", "),
        format!(
            "{} was trained with {}; given {}; leave {} out to continue the run as recorded \
             (only --epochs may change, to raise the total), or start a new run with --out",
            dir.display(),
            recorded.join(", "),
            given.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        ),
    ))
}

/// The data to continue the run on: `--data-dir` if given, else the
/// recorded directory; either must hold the data the run trained on. With
/// no record (an older checkpoint): `--data-dir`, else the directory its
/// run.json names, else the usual search, with a warning that it cannot be
/// checked.
pub fn resume_data(
    args: &TrainArgs,
    dir: &Path,
    record: Option<&RunRecord>,
    options: &TrainOptions,
    progress: bool,
    warn: impl Fn(String),
) -> Result<FashionMnist> {
    let Some(r) = record else {
        // an older checkpoint: --data-dir, else the directory run.json names, else the search
        let mut source = args.data.source(progress);
        if source.data_dir.is_none() {
            source.data_dir = run_json(dir).and_then(|doc| doc["data_dir"].as_str().map(PathBuf::from));
        }
        let fm = crate::locate::load(&source)?;
        warn(format!(
            "warning: {}'s checkpoint predates normlab's record of the data; resuming on {}, which cannot be checked against the data the run began with",
            dir.display(),
            fm.dir.display()
        ));
        return Ok(fm);
    };
    let recorded = &r.data;
    let choice = DataChoice::parse(&recorded.dataset).map_err(|_| {
        Error::data(
            dir,
            format!("its run record names the data set '{}', which this normlab does not know", recorded.dataset),
        )
    })?;
    let [channels, rows, cols] = options.input_shape;
    let fm = match &args.data.data_dir {
        Some(_) => args.data.load(choice, progress, Some(channels), rows, cols)?.1,
        None => args.data.load_from(choice, &recorded.dir, progress, Some(channels), rows, cols).map_err(|e| {
            Error::data(
                &recorded.dir,
                format!(
                    "the data {} was trained on cannot be read ({e}); pass --data-dir naming a copy of the same files",
                    dir.display()
                ),
            )
        })?,
    };
    let names_agree = recorded.class_names.as_ref().is_none_or(|n| *n == fm.class_names);
    if data_sha256(&fm) == recorded.sha256 && names_agree {
        return Ok(fm);
    }
    let what = format!(
        "holds other data than {} was trained on ({} training and {} test images from {})",
        dir.display(),
        recorded.train_examples,
        recorded.test_examples,
        recorded.dir.display()
    );
    Err(match &args.data.data_dir {
        Some(given) => Error::config(
            "--data-dir",
            format!(
                "{} {what}; leave --data-dir out to use that directory, or name one with the same files",
                given.display()
            ),
        ),
        None => {
            Error::data(&recorded.dir, format!("{what}: its files changed; pass --data-dir naming the original files"))
        }
    })
}

fn run_json(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).ok()?).ok()
}

/// True when run.json says the run finished its `done` epochs (its result
/// is the summary, written last, after any recomputation of statistics).
pub fn finished(dir: &Path, done: usize) -> bool {
    run_json(dir)
        .is_some_and(|doc| doc["result"]["summary"] == true && doc["result"]["epochs"].as_u64() == Some(done as u64))
}

/// Whether a run whose checkpoint predates the record recomputes the
/// statistics: if `--recompute-stats` is given, or run.json shows that
/// the run did.
pub fn legacy_recompute(args: &TrainArgs, dir: &Path) -> bool {
    args.recompute_stats || run_json(dir).is_some_and(|doc| doc["result"]["recompute_stats"].is_object())
}
