//! Runs of `normlab train` with the small recipe of the command tests
//! (1,024 images of the committed subset, 2 epochs; well under a second in
//! release mode), one of them shared by the tests through a `OnceLock`,
//! and readers for what a run writes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::{normlab, s, subset, Out};

/// The small recipe every training run here uses (plus --seed and --out).
pub const TRAIN: [&str; 11] =
    ["train", "--limit-train", "1024", "--limit-val", "256", "--epochs", "2", "--batch-size", "32", "--lr", "0.2"];
pub const EPOCHS: usize = 2;
/// Every file a finished `normlab train` leaves in its directory, sorted.
pub const RUN_OUTPUTS: [&str; 7] = [
    "best.safetensors",
    "checkpoint.safetensors",
    "curves.png",
    "curves.svg",
    "metrics.csv",
    "model.safetensors",
    "run.json",
];
pub const LIMIT_VAL: usize = 256;

/// `normlab train` with the small recipe, `--data-dir subset --out out`.
pub fn train(out: &Path, extra: &[&str]) -> Out {
    let sub = subset();
    let mut args: Vec<&str> = vec![TRAIN[0]];
    // an option given in `extra` replaces the recipe's
    for pair in TRAIN[1..].chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend(pair);
        }
    }
    args.extend(["--data-dir", s(&sub), "--out", s(out)]);
    args.extend(extra);
    normlab(&args)
}

pub fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("'{key}' is not a number in {v}"))
}

/// metrics.csv as (header, rows of numbers).
pub fn read_metrics(dir: &Path) -> (String, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = text.lines();
    let header = lines.next().expect("a header").to_string();
    let rows = lines
        .map(|l| l.split(',').map(|x| x.parse::<f64>().unwrap_or_else(|e| panic!("'{x}' in '{l}': {e}"))).collect())
        .collect();
    (header, rows)
}

/// A safetensors file's f32 tensors by name, and its metadata.
pub type TensorsAndMeta = (Vec<(String, Vec<f32>)>, std::collections::HashMap<String, String>);

/// Every f32 tensor of a safetensors file, by name (and the metadata).
pub fn tensors(path: &Path) -> TensorsAndMeta {
    let bytes = std::fs::read(path).expect("checkpoint");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(n, v)| {
            let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (n, data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    (out, meta.metadata().clone().unwrap_or_default())
}

pub fn tensor(path: &Path, name: &str) -> Vec<f32> {
    tensors(path)
        .0
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor {name} in {}", path.display()))
        .1
}

/// A directory under the target directory for state shared by the tests of
/// this process (a `static` is never dropped, so it cannot be a plain
/// `tempfile::tempdir()`); stale ones from earlier runs are removed.
pub fn shared_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    if let Ok(entries) = std::fs::read_dir(base) {
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if stale && e.file_name().to_string_lossy().starts_with("normlab-cli-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new().prefix("normlab-cli-").tempdir_in(base).expect("temporary directory")
}

pub struct Trained {
    _dir: tempfile::TempDir,
    pub out: PathBuf,
    /// The JSON lines `train --json` printed.
    pub lines: Vec<Value>,
    pub stdout: String,
}

impl Trained {
    pub fn model(&self) -> PathBuf {
        self.out.join("model.safetensors")
    }
    pub fn last_epoch(&self) -> &Value {
        &self.lines[EPOCHS - 1]
    }
    pub fn summary(&self) -> &Value {
        self.lines.last().unwrap()
    }
}

/// One bn-lenet run with seed 7 and `--json` (without `--quiet`, so that
/// the human-readable lines go to stderr and must stay out of stdout).
pub fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = shared_dir();
        let out = dir.path().join("run");
        let r = train(&out, &["--seed", "7", "--json"]).ok();
        let lines = r
            .stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("train --json printed a line that is not JSON ({e}): {l:?}"))
            })
            .collect();
        Trained { _dir: dir, out, lines, stdout: r.stdout }
    })
}

pub fn eval_json(checkpoint: &Path, limit: Option<usize>) -> Value {
    let sub = subset();
    let limit = limit.map(|l| l.to_string());
    let mut args = vec!["eval", "--checkpoint", s(checkpoint), "--data-dir", s(&sub), "--json"];
    if let Some(l) = &limit {
        args.extend(["--limit", l]);
    }
    normlab(&args).ok().json()
}

/// The first `n` test images of the subset with their labels.
pub fn test_images(n: usize) -> Vec<(image::GrayImage, usize)> {
    let fm = normlab::data::load_dir(&subset()).expect("subset loads");
    (0..n)
        .map(|i| {
            let img = image::GrayImage::from_raw(28, 28, fm.test.image(i).to_vec()).unwrap();
            (img, fm.test.labels[i] as usize)
        })
        .collect()
}

/// A copy of the subset that a test may damage.
pub fn subset_copy(dir: &Path) -> PathBuf {
    let copy = dir.join("data");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(subset()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    copy
}
