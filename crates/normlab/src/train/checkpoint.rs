//! Checkpoints as safetensors files that PyTorch reads directly.
//!
//! Tensor names and dtypes are those of the same network's PyTorch
//! `state_dict` (`net.0.weight`, `net.1.running_mean`, and
//! `net.1.num_batches_tracked` as int64), so
//!
//! ```python
//! from safetensors.torch import load_file
//! model.load_state_dict(load_file("model.safetensors"), strict=True)
//! ```
//!
//! works on the matching `nn.Sequential` held as `net`. normlab's own
//! description of the network goes in the file's metadata, so `load`
//! rebuilds the right model: its name, its layers as a
//! [`ModelSpec`] in JSON ([`META_SPEC`], with the input shape it was built
//! for), and for the chapter's LeNet family also its [`LeNetConfig`]
//! ([`META_NETWORK`], all that files written before model files existed
//! hold).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::fsutil::write_atomic;
use crate::layers::StateMut;
use crate::models::{Architecture, LeNetConfig, ModelKind, ModelSpec, Sequential, INPUT_SHAPE};
use crate::rng;
use crate::{Error, Result};

/// Metadata key safetensors readers look at: `"pt"`, PyTorch tensors.
pub const META_FORMAT: &str = "format";
/// Metadata key of the model's name (`bn-lenet`, or a variant's).
pub const META_MODEL: &str = "normlab.model";
/// Metadata key of a LeNet's description, a [`LeNetConfig`] as JSON.
pub const META_NETWORK: &str = "normlab.network";
/// Metadata key of the network's layers, a [`ModelSpec`] as JSON whose
/// `input` is the shape the network was built for.
pub const META_SPEC: &str = "normlab.spec";
/// Metadata key of the normlab version that wrote the file.
pub const META_VERSION: &str = "normlab.version";
/// Metadata key of the names of the classes the model was trained on, a
/// JSON list indexed by label; its length is the width of the output.
/// Absent: Fashion-MNIST's ten classes.
pub const META_CLASS_NAMES: &str = "normlab.data.class_names";
/// Metadata key of the shape of one input example, `[channels, rows,
/// cols]` as JSON. Absent: Fashion-MNIST's `[1, 28, 28]`.
pub const META_INPUT_SHAPE: &str = "normlab.data.input_shape";
/// Metadata key of the data set a model was trained on (`fashion-mnist`,
/// `mnist`, `kmnist`, `image-folder`), for people and for the CLI's defaults.
pub const META_DATASET: &str = "normlab.data.dataset";

/// The largest input side and channel count a checkpoint may declare: the
/// network is built from the declared shape before any tensor is compared,
/// so a lying shape must not make it allocate gigabytes.
const MAX_INPUT_SIDE: usize = 256;
const MAX_INPUT_CHANNELS: usize = 4;

/// The metadata entries that record what a model's data looks like
/// ([`META_DATASET`], [`META_CLASS_NAMES`], [`META_INPUT_SHAPE`]), to pass
/// among the `extra` entries of [`save`] so that [`load`] rebuilds a
/// network of the right input and output.
pub fn data_metadata(dataset: &str, class_names: &[String], input_shape: [usize; 3]) -> Vec<(&'static str, String)> {
    vec![
        (META_DATASET, dataset.to_string()),
        (META_CLASS_NAMES, serde_json::to_string(class_names).expect("strings serialize")),
        (META_INPUT_SHAPE, serde_json::to_string(&input_shape).expect("numbers serialize")),
    ]
}

/// Marks a file written by [`save_state_dict`]: the state of a network
/// built in code, without a description to rebuild it from.
pub const META_STATE_DICT: &str = "normlab.state_dict";

/// What a checkpoint says about itself.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    /// The model's name ([`META_MODEL`]).
    pub model: String,
    /// The network to rebuild ([`META_NETWORK`] for a LeNet, else [`META_SPEC`]).
    pub network: Architecture,
    /// One example's shape the network was built for (`[1, 28, 28]` in
    /// files that do not say).
    pub input: Vec<usize>,
    /// All metadata entries, normlab's and any extra ones.
    pub metadata: HashMap<String, String>,
    /// One input example's shape ([`META_INPUT_SHAPE`], else `[1, 28, 28]`).
    pub input_shape: [usize; 3],
    /// The class names ([`META_CLASS_NAMES`]); `None` in a file without
    /// them: Fashion-MNIST's ten classes.
    pub class_names: Option<Vec<String>>,
}

impl CheckpointInfo {
    /// The width of the model's output.
    /// Without class names: a described network's output width, a
    /// LeNet's ten.
    pub fn num_classes(&self) -> usize {
        if let Some(names) = &self.class_names {
            return names.len();
        }
        match &self.network {
            Architecture::Spec(spec) => match spec.check(Some(&self.input)).as_deref() {
                Ok(&[classes]) => classes,
                _ => crate::models::NUM_CLASSES,
            },
            Architecture::LeNet(_) => crate::models::NUM_CLASSES,
        }
    }
}

/// Serializes every parameter and buffer of `net`, with `extra` metadata;
/// `network` (a [`LeNetConfig`], a [`ModelSpec`] or an [`Architecture`])
/// describes `net`, and `load` rebuilds it from that.
pub fn to_bytes(
    net: &mut Sequential<f32>,
    model: &str,
    network: impl Into<Architecture>,
    extra: &[(&str, String)],
) -> Result<Vec<u8>> {
    to_bytes_with(net, model, network, extra, &[])
}

/// An f32 tensor stored beside the model's state (optimizer buffers).
pub type ExtraTensor = (String, Vec<usize>, Vec<f32>);

/// Like [`to_bytes`], with extra tensors (names outside the model's).
pub fn to_bytes_with(
    net: &mut Sequential<f32>,
    model: &str,
    network: impl Into<Architecture>,
    extra: &[(&str, String)],
    extra_tensors: &[ExtraTensor],
) -> Result<Vec<u8>> {
    let network = network.into();
    if net.example_shape().is_empty() {
        return Err(Error::config("model", "the network is not built: build it before saving it"));
    }
    let mut meta = HashMap::new();
    meta.insert(META_MODEL.to_string(), model.to_string());
    if let Architecture::LeNet(config) = &network {
        meta.insert(META_NETWORK.to_string(), serde_json::to_string(config).expect("config serializes"));
    }
    // a LeNet's layers as built: its last layer as wide as the net's output
    let spec = match (&network, net.output_shape()) {
        (Architecture::LeNet(config), &[classes]) => config.spec_for(classes)?,
        _ => network.spec(),
    };
    let spec = spec.with_input(net.example_shape());
    meta.insert(META_SPEC.to_string(), serde_json::to_string(&spec).expect("a ModelSpec serializes"));
    serialize(net, meta, extra, extra_tensors)
}

/// Serializes the state (every parameter and buffer, named as in
/// PyTorch's `state_dict`) of any network, such as one built in code with
/// [`Sequential::push`], with `extra` metadata. [`load_into`] reads it back
/// into a network of the same architecture.
pub fn state_dict_to_bytes(net: &mut Sequential<f32>, extra: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut meta = HashMap::new();
    meta.insert(META_STATE_DICT.to_string(), "Sequential".to_string());
    serialize(net, meta, extra, &[])
}

/// Writes the state of any network atomically, as
/// [`state_dict_to_bytes`]; load it with [`load_into`], or in PyTorch with
/// `model.load_state_dict(safetensors.torch.load_file(path))` on the
/// matching `nn.Sequential` held as `net`.
///
/// ```
/// use normlab::layers::{Linear, ReLU};
/// use normlab::models::Sequential;
/// use normlab::train::checkpoint;
/// use normlab::rng;
/// let net = || Sequential::<f32>::new().push(Linear::new(4)).push(ReLU::new()).push(Linear::new(2));
/// let (mut a, mut b) = (net(), net());
/// a.build(&[3], &mut rng::seeded(0))?;
/// b.build(&[3], &mut rng::seeded(1))?;
/// let path = std::env::temp_dir().join(format!("doc-state-dict-{}.safetensors", std::process::id()));
/// checkpoint::save_state_dict(&mut a, &[], &path)?;
/// checkpoint::load_into(&mut b, &path)?;
/// # std::fs::remove_file(&path).unwrap();
/// assert_eq!(a.state_names(), ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]);
/// # Ok::<(), normlab::Error>(())
/// ```
pub fn save_state_dict(net: &mut Sequential<f32>, extra: &[(&str, String)], path: &Path) -> Result<()> {
    write_atomic(path, &state_dict_to_bytes(net, extra)?)
}

/// The file: `extra_tensors`, then the model's state, with `meta`, the
/// format and version entries and `extra` as metadata.
fn serialize(
    net: &mut Sequential<f32>,
    mut meta: HashMap<String, String>,
    extra: &[(&str, String)],
    extra_tensors: &[ExtraTensor],
) -> Result<Vec<u8>> {
    let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, shape, values) in extra_tensors {
        entries.push((name.clone(), Dtype::F32, shape.clone(), values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    for (name, s) in net.state_mut() {
        match s {
            StateMut::Param { value, .. } | StateMut::Buffer(value) => {
                let bytes = value.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                entries.push((name, Dtype::F32, value.shape().to_vec(), bytes));
            }
            StateMut::Count(c) => entries.push((name, Dtype::I64, vec![], c.to_le_bytes().to_vec())),
        }
    }
    meta.insert(META_FORMAT.to_string(), "pt".to_string());
    meta.insert(META_VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string());
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("sizes match by construction")))
        .collect();
    let bytes = safetensors::serialize(views, &Some(meta))
        .map_err(|e| Error::checkpoint("<memory>", format!("cannot serialize: {e}")))?;
    Ok(canonical_header(bytes))
}

/// Rewrites the JSON header with its keys sorted: safetensors writes
/// metadata in hash-map order, which differs from run to run, and the same
/// training must give the same bytes. Tensor offsets are relative to the
/// data section, so only the header changes.
fn canonical_header(bytes: Vec<u8>) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors wrote valid JSON");
    // serde_json's map is ordered by key
    let mut text = serde_json::to_string(&header).expect("JSON value serializes");
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Writes a checkpoint atomically.
pub fn save(
    net: &mut Sequential<f32>,
    model: &str,
    network: impl Into<Architecture>,
    extra: &[(&str, String)],
    path: &Path,
) -> Result<()> {
    write_atomic(path, &to_bytes(net, model, network, extra)?)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    read_bounded(path)
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    let bad = |e: safetensors::SafeTensorError| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors checkpoint ({e}); pass a model.safetensors written by `normlab train`"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(bad)?;
    let st = SafeTensors::deserialize(bytes).map_err(bad)?;
    Ok((st, meta.metadata().clone().unwrap_or_default()))
}

/// Reads a checkpoint's description without loading the weights.
pub fn info(path: &Path) -> Result<CheckpointInfo> {
    let bytes = read(path)?;
    let (_, metadata) = parse(path, &bytes)?;
    info_from(path, metadata)
}

fn info_from(path: &Path, metadata: HashMap<String, String>) -> Result<CheckpointInfo> {
    let model = metadata.get(META_MODEL).cloned().ok_or_else(|| {
        if metadata.contains_key(META_STATE_DICT) {
            Error::checkpoint(
                path,
                "this file holds the state of a network built in code (checkpoint::save_state_dict), \
                 with no description to rebuild it from; build the same network and use checkpoint::load_into",
            )
        } else {
            Error::checkpoint(path, format!("no '{META_MODEL}' in the metadata: this file was not written by normlab"))
        }
    })?;
    let not_understood = |key: &str, e: serde_json::Error| {
        Error::checkpoint(path, format!("metadata '{key}' is not a network description this normlab understands: {e}"))
    };
    let lenet: Option<LeNetConfig> = metadata
        .get(META_NETWORK)
        .map(|s| serde_json::from_str(s).map_err(|e| not_understood(META_NETWORK, e)))
        .transpose()?;
    let spec: Option<ModelSpec> = metadata
        .get(META_SPEC)
        .map(|s| serde_json::from_str(s).map_err(|e| not_understood(META_SPEC, e)))
        .transpose()?;
    let (network, input) = match (lenet, spec) {
        (None, None) => {
            return Err(Error::checkpoint(path, format!("no '{META_SPEC}' nor '{META_NETWORK}' in the metadata")));
        }
        (Some(config), None) => (Architecture::LeNet(config), INPUT_SHAPE.to_vec()),
        (lenet, Some(spec)) => {
            let input = spec.input.clone().unwrap_or_else(|| INPUT_SHAPE.to_vec());
            // a LeNet's configuration, when present, is what builds the
            // network (as in files that hold nothing else); the spec gives the input
            match lenet {
                Some(config) => (Architecture::LeNet(config), input),
                None => (Architecture::Spec(spec), input),
            }
        }
    };
    // a ready-made model's name promises its network: refuse a file whose
    // description says otherwise rather than mislabel what it holds
    if let Ok(kind) = ModelKind::parse(&model) {
        // BN's momentum and eps are training settings (--bn-momentum,
        // --bn-eps), not part of what the name promises
        let plain = |a: &Architecture| a.spec().with_batch_norm(Some(0.1), Some(1e-5)).layers;
        if plain(&network) != plain(&Architecture::LeNet(kind.config())) {
            return Err(Error::checkpoint(
                path,
                format!("the metadata names model '{model}' but describes a different network; the file was edited or damaged"),
            ));
        }
    }
    let (input_shape, class_names) = data_shape(path, &metadata)?;
    // a LeNet's input is the data's (files before model files say nothing else)
    let input = if matches!(network, Architecture::LeNet(_)) { input_shape.to_vec() } else { input };
    if let Err(e) = network.spec().check(Some(&input)) {
        return Err(Error::checkpoint(path, format!("the network description in the metadata is invalid: {e}")));
    }
    Ok(CheckpointInfo { model, network, input, metadata, input_shape, class_names })
}

/// The input shape and class names the metadata records, checked to be
/// something normlab can have written.
fn data_shape(path: &Path, metadata: &HashMap<String, String>) -> Result<([usize; 3], Option<Vec<String>>)> {
    let damaged = |key: &str, what: String| {
        Error::checkpoint(
            path,
            format!("metadata '{key}' {what}; the file was edited or damaged, use another checkpoint"),
        )
    };
    let input_shape = match metadata.get(META_INPUT_SHAPE) {
        None => crate::models::INPUT_SHAPE,
        Some(text) => {
            let shape: [usize; 3] = serde_json::from_str(text)
                .map_err(|e| damaged(META_INPUT_SHAPE, format!("is not [channels, rows, cols] ({e})")))?;
            let [c, h, w] = shape;
            if !(1..=MAX_INPUT_CHANNELS).contains(&c)
                || !(1..=MAX_INPUT_SIDE).contains(&h)
                || !(1..=MAX_INPUT_SIDE).contains(&w)
            {
                return Err(damaged(
                    META_INPUT_SHAPE,
                    format!("is {shape:?}, beyond 1 to {MAX_INPUT_CHANNELS} channels of 1 to {MAX_INPUT_SIDE} pixels a side"),
                ));
            }
            shape
        }
    };
    let class_names = match metadata.get(META_CLASS_NAMES) {
        None => None,
        Some(text) => {
            let names: Vec<String> = serde_json::from_str(text)
                .map_err(|e| damaged(META_CLASS_NAMES, format!("is not a list of names ({e})")))?;
            if !(2..=256).contains(&names.len()) {
                return Err(damaged(META_CLASS_NAMES, format!("lists {} classes, not 2 to 256", names.len())));
            }
            Some(names)
        }
    };
    Ok((input_shape, class_names))
}

/// Rebuilds the network a checkpoint describes and loads its state. A
/// training checkpoint (`checkpoint.safetensors`) gives its model; the
/// optimizer's tensors are passed over. The file is refused (naming the
/// tensor) when it is not a regular file of the size its header declares,
/// or holds NaN, infinity or a negative running variance.
pub fn load(path: &Path) -> Result<(Sequential<f32>, CheckpointInfo)> {
    let bytes = read(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    let info = info_from(path, metadata)?;
    let mut net = info
        .network
        .build_for(&info.input, info.num_classes(), &mut rng::seeded(0))
        .map_err(|e| Error::checkpoint(path, format!("the network description in the metadata is invalid: {e}")))?;
    // a training checkpoint (checkpoint.safetensors) loads as its model part
    load_state(&mut net, path, &st, Some(OPTIMIZER_PREFIX))?;
    Ok((net, info))
}

/// Loads a training checkpoint: the model's state into `net`, and returns
/// the metadata and every tensor whose name starts with `extra_prefix`.
pub fn load_with_extras(
    net: &mut Sequential<f32>,
    path: &Path,
    extra_prefix: &str,
) -> Result<(HashMap<String, String>, Vec<ExtraTensor>)> {
    let bytes = read(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    load_state(net, path, &st, Some(extra_prefix))?;
    let mut extras = Vec::new();
    for name in st.names() {
        if name.starts_with(extra_prefix) {
            let view = st.tensor(name).map_err(|e| Error::checkpoint(path, format!("tensor '{name}': {e}")))?;
            if view.dtype() != Dtype::F32 {
                return Err(Error::checkpoint(path, format!("tensor '{name}' is {:?}, expected F32", view.dtype())));
            }
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
            check_values(path, name, &values)?;
            extras.push((name.clone(), view.shape().to_vec(), values));
        }
    }
    extras.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((metadata, extras))
}

/// Loads the state of a checkpoint ([`save`], [`save_state_dict`]) into an
/// existing, built network of the same architecture; every name must
/// match, with the same shape and dtype (optimizer tensors, `optim.*`, are
/// passed over), and the values are checked as by [`load`]. Returns the
/// file's metadata.
pub fn load_into(net: &mut Sequential<f32>, path: &Path) -> Result<HashMap<String, String>> {
    if net.example_shape().is_empty() {
        return Err(Error::checkpoint(
            path,
            "the network is not built: call build() with one example's shape (e.g. &[1, 28, 28]) before loading into it",
        ));
    }
    let bytes = read(path)?;
    let (st, metadata) = parse(path, &bytes)?;
    load_state(net, path, &st, Some(OPTIMIZER_PREFIX))?;
    Ok(metadata)
}

fn load_state(net: &mut Sequential<f32>, path: &Path, st: &SafeTensors<'_>, ignore_prefix: Option<&str>) -> Result<()> {
    let mut expected = Vec::new();
    let mut missing = Vec::new();
    for (name, s) in net.state_mut() {
        expected.push(name.clone());
        let view = match st.tensor(&name) {
            Ok(v) => v,
            Err(_) => {
                missing.push(name);
                continue;
            }
        };
        let mismatch = |what: String| {
            Error::checkpoint(path, format!("tensor '{name}': {what}; the checkpoint is from a different model"))
        };
        match s {
            StateMut::Param { value, .. } | StateMut::Buffer(value) => {
                if view.dtype() != Dtype::F32 {
                    return Err(mismatch(format!("dtype {:?}, expected F32", view.dtype())));
                }
                if view.shape() != value.shape() {
                    return Err(mismatch(format!("shape {:?}, expected {:?}", view.shape(), value.shape())));
                }
                for (d, b) in value.data_mut().iter_mut().zip(view.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
                check_values(path, &name, value.data())?;
            }
            StateMut::Count(c) => {
                if view.dtype() != Dtype::I64 || view.data().len() != 8 {
                    return Err(mismatch(format!(
                        "dtype {:?} shape {:?}, expected an int64 scalar",
                        view.dtype(),
                        view.shape()
                    )));
                }
                *c = i64::from_le_bytes(view.data().try_into().expect("8 bytes"));
                if *c < 0 {
                    return Err(Error::checkpoint(
                        path,
                        format!("tensor '{name}' is {c}, a negative count; {DAMAGED}"),
                    ));
                }
            }
        }
    }
    let unknown: Vec<String> = st
        .names()
        .into_iter()
        .filter(|n| !expected.contains(n) && !ignore_prefix.is_some_and(|p| n.starts_with(p)))
        .cloned()
        .collect();
    if !missing.is_empty() || !unknown.is_empty() {
        let mut msg = String::from("the checkpoint does not match the model:");
        if !missing.is_empty() {
            msg += &format!(" missing {}", missing.join(", "));
        }
        if !unknown.is_empty() {
            msg += &format!(" unexpected {}", unknown.join(", "));
        }
        return Err(Error::checkpoint(path, msg));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What a loaded file must be before it is believed: a regular file of the
// size its header declares, read without trusting any length in it, and
// values a trained network can hold.

/// The fix for a file whose content is impossible.
const DAMAGED: &str = "the file is damaged: use another checkpoint (the model.safetensors of a good run)";

/// The largest JSON header read (the safetensors format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The largest checkpoint read: normlab's networks take a few megabytes,
/// so a file that declares more is refused before its data is read.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

/// The prefix of a training checkpoint's optimizer tensors, which
/// [`load`] and [`load_into`] pass over: a checkpoint.safetensors loads as
/// the model it holds.
const OPTIMIZER_PREFIX: &str = "optim.";

/// Reads a checkpoint after checking, from the file system's metadata and
/// the 8-byte header length, that it is a regular file whose size is the
/// one its header declares: a directory, a FIFO (which would block) or a
/// device (`/dev/zero`, which never ends) is refused before it is opened,
/// and a file padded or truncated (a 4 GB sparse file) before its data is
/// read.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            let fix = "`normlab train` writes model.safetensors and checkpoint.safetensors in its run directory";
            Error::checkpoint(path, format!("{e}; check the path ({fix})"))
        }
        _ => Error::io(path, e),
    })?;
    if meta.is_dir() {
        let inside = path.join("model.safetensors");
        let fix = if inside.is_file() {
            format!("pass the file inside it: --checkpoint {}", inside.display())
        } else {
            "pass a model.safetensors file written by `normlab train`".to_string()
        };
        return Err(Error::checkpoint(path, format!("is a directory, not a checkpoint; {fix}")));
    }
    if !meta.is_file() {
        return Err(Error::checkpoint(
            path,
            "is not a regular file (a device, FIFO or socket); pass a model.safetensors file written by `normlab train`",
        ));
    }
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // the size of what was opened (the path may have been replaced since)
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let bad = |what: String| {
        Error::checkpoint(
            path,
            format!("not a valid safetensors checkpoint ({what}); pass a model.safetensors written by `normlab train`"),
        )
    };
    if size < 8 {
        return Err(bad(format!("{size} bytes, less than the 8-byte header length")));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES || n > size - 8 {
        return Err(bad(format!("its header claims {n} bytes, the file has {size}")));
    }
    let mut header = Vec::new();
    (&mut file).take(n).read_to_end(&mut header).map_err(|e| Error::io(path, e))?;
    let declared = declared_size(&header).map_err(bad)?;
    if declared > MAX_CHECKPOINT_BYTES {
        return Err(bad(format!(
            "its header declares {declared} bytes of tensors, more than the {} MiB normlab reads",
            MAX_CHECKPOINT_BYTES >> 20
        )));
    }
    if declared.checked_add(8 + n) != Some(size) {
        return Err(Error::checkpoint(
            path,
            format!(
                "the file is {size} bytes but its header describes {}; it is truncated, padded or damaged: \
                 use another checkpoint",
                (8 + n).saturating_add(declared)
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend_from_slice(&len);
    bytes.append(&mut header);
    file.take(declared).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 != size {
        return Err(Error::checkpoint(path, "the file changed while it was read; try again"));
    }
    Ok(bytes)
}

/// The size of the data section a safetensors JSON header describes: the
/// largest end offset of its tensors.
fn declared_size(header: &[u8]) -> std::result::Result<u64, String> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("the header is not a JSON object: {e}"))?;
    let mut end = 0u64;
    for (name, entry) in map.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let offsets = entry.get("data_offsets").and_then(|o| o.as_array()).filter(|o| o.len() == 2);
        let last = offsets.and_then(|o| o[1].as_u64()).ok_or_else(|| format!("tensor '{name}' has no data_offsets"))?;
        end = end.max(last);
    }
    Ok(end)
}

/// Values no trained network holds: NaN or infinity anywhere, a negative
/// running variance; the error names the tensor.
fn check_values(path: &Path, name: &str, values: &[f32]) -> Result<()> {
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        let what = if name.starts_with(OPTIMIZER_PREFIX) {
            "the optimizer state of this training checkpoint is corrupt (training never saves such a value): \
             resume from a good copy or start the run again"
        } else {
            DAMAGED
        };
        return Err(Error::checkpoint(path, format!("tensor '{name}' holds {v}; {what}")));
    }
    if name.ends_with("running_var") {
        if let Some(v) = values.iter().find(|&&v| v < 0.0) {
            return Err(Error::checkpoint(
                path,
                format!("tensor '{name}' holds the variance {v}, and a variance is never negative; {DAMAGED}"),
            ));
        }
    }
    Ok(())
}
