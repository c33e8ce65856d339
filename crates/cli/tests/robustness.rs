//! Robustness against bad input (issue 6): every bad file or option gives
//! exit code 2 (CLI) or an `Err` (library) with a one-line message that
//! names the file or option, never a panic, a hang, or an allocation the
//! input does not justify.
//!
//! The IDX rows of the issue's table and the option rows are tested in
//! `tests/data.rs` and `tests/cli.rs`; this file holds the others:
//!
//! * checkpoints: header length beyond the file, a tensor with the wrong
//!   shape or dtype, missing and unknown names, a checkpoint of another
//!   model, an invalid network description in the metadata, NaN weights;
//! * images for `predict`: decompression bombs (PNG and JPEG), and 16-bit,
//!   palette and alpha PNGs, which must work;
//! * the disk full while saving (through `/dev/full`, see below);
//! * mutation testing ("fuzzing") of the three parsers with proptest over
//!   real files: IDX, checkpoints, PNG/JPEG through the `image` crate with
//!   the limits `normlab predict` uses. A few hundred cases per target by
//!   default; the long mode is
//!
//!   ```text
//!   NORMLAB_FUZZ_SECS=200 cargo test --release --test robustness fuzz_ -- --test-threads 1 --nocapture
//!   ```
//!
//!   (`NORMLAB_FUZZ_CASES=N` sets a number of cases instead,
//!   `NORMLAB_FUZZ_SEED=N` another random sequence). Inputs that panic, run
//!   too long or allocate too much are saved under
//!   `target/tmp/normlab-fuzz-failures/`.
//!
//! Three tests describe bugs found here and fail until src/ is fixed (their
//! doc comments start with "BUG"): a JPEG bomb inside predict's limits,
//! network-description errors that do not name the checkpoint, and a
//! model name in the metadata that contradicts the network. In the long
//! mode, `fuzz_image_decoder` fails on the same JPEG bomb.
//!
//! Seeds for the mutation tests live in `tests/corpus/` (see the README
//! there); `NORMLAB_WRITE_CORPUS=1 cargo test --release --test robustness
//! corpus_` regenerates them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use flate2::read::{MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{json, Value};

use normlab::data::{idx, CLASS_NAMES};
use normlab::fsutil::{temp_path, write_atomic};
use normlab::models::{self, ModelKind};
use normlab::train::checkpoint;
use normlab::{rng, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_normlab");

/// The limits of `normlab predict` (src/cli/predict.rs, `load_image`, which
/// lives in the binary and cannot be called from here).
const PREDICT_MAX_SIDE: u32 = 16_384;
const PREDICT_MAX_ALLOC: u64 = 256 << 20;

// ---------------------------------------------------------------------------
#[path = "../../../tests/support/largest_alloc.rs"]
mod largest_alloc;
use largest_alloc::largest_allocation;

// ---------------------------------------------------------------------------
// Running the command line with a hang guard, its wall time and peak memory

fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// No normlab command here should take longer; beyond it, it is a hang.
const HANG: Duration = Duration::from_secs(120);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
    args: String,
    wall: Duration,
    /// Peak resident memory of the process (VmHWM, sampled every millisecond
    /// while it runs; 0 for a process too quick to be sampled).
    max_rss_kb: i64,
}

impl Out {
    fn ctx(&self) -> String {
        format!(
            "normlab {}\nexit code {} after {:.2?}, peak RSS {} MB\nstderr:\n{}\nstdout:\n{}",
            self.args,
            self.code,
            self.wall,
            self.max_rss_kb / 1024,
            self.stderr,
            self.stdout
        )
    }

    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {}", self.ctx());
        assert!(!self.stderr.contains("panicked"), "{}", self.ctx());
        self
    }

    /// Exit code 2, one line on stderr starting with "error:" that contains
    /// every needle, nothing on stdout, no panic.
    fn user_error(&self, needles: &[&str]) -> &Self {
        assert!(self.stdout.is_empty(), "nothing on stdout on error: {}", self.ctx());
        self.fails_with(needles)
    }

    /// `user_error` for a command that may already have printed results.
    fn fails_with(&self, needles: &[&str]) -> &Self {
        let ctx = self.ctx();
        assert!(!self.stderr.contains("panicked"), "panic: {ctx}");
        assert_eq!(self.code, 2, "expected exit code 2: {ctx}");
        assert!(self.stderr.starts_with("error:"), "stderr must start with 'error:': {ctx}");
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "stderr must be one line: {ctx}");
        for n in needles {
            assert!(self.stderr.contains(n), "stderr should mention '{n}': {ctx}");
        }
        // the table's evidence: the actual message of each bad input
        eprintln!("[{}] {}", self.args, self.stderr.trim_end());
        self
    }
}

type PreExec = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// Runs `normlab ARGS`, reaping it with `wait4` for its peak RSS; a run
/// longer than [`HANG`] is killed and fails the test.
fn normlab_with<S: AsRef<OsStr>>(args: &[S], pre_exec: Option<PreExec>) -> Out {
    let stdout = tempfile::tempfile().expect("temporary file");
    let stderr = tempfile::tempfile().expect("temporary file");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("NORMLAB_DATA")
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap());
    if let Some(hook) = pre_exec {
        // SAFETY: the hooks below only make async-signal-safe system calls
        // on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
    let start = Instant::now();
    let child = cmd.spawn().expect("run normlab");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain system calls on a child of this process.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut hwm_kb = 0i64;
    loop {
        // VmHWM, the peak RSS of the process's own memory since its exec
        // (ru_maxrss would count this test process's memory at the fork)
        if let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kb) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                hwm_kb = hwm_kb.max(kb);
            }
        }
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", io::Error::last_os_error());
        if start.elapsed() > HANG {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("normlab {:?} hangs: killed after {HANG:?}", args.iter().map(|a| a.as_ref()).collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = start.elapsed();
    drop(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    let read = |mut f: std::fs::File| {
        use std::io::Seek;
        let mut v = Vec::new();
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        String::from_utf8_lossy(&v).into_owned()
    };
    Out {
        code,
        stdout: read(stdout),
        stderr: read(stderr),
        args: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        wall,
        max_rss_kb: hwm_kb,
    }
}

fn normlab<S: AsRef<OsStr>>(args: &[S]) -> Out {
    normlab_with(args, None)
}

// ---------------------------------------------------------------------------
// Checkpoints trained once for this file (1 epoch on 256 images)

struct Trained {
    _dir: tempfile::TempDir,
    bn: PathBuf,
    ln: PathBuf,
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tempfile::Builder::new().prefix("normlab-robustness-").tempdir_in(base).expect("temporary directory");
        let sub = subset();
        let mut paths = Vec::new();
        for model in ["bn-lenet", "ln-lenet"] {
            let out = dir.path().join(model);
            normlab(&[
                "train",
                "--model",
                model,
                "--limit-train",
                "256",
                "--limit-val",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "64",
                "--seed",
                "3",
                "--quiet",
                "--data-dir",
                s(&sub),
                "--out",
                s(&out),
            ])
            .ok();
            paths.push(out.join("model.safetensors"));
        }
        Trained { bn: paths[0].clone(), ln: paths[1].clone(), _dir: dir }
    })
}

/// A checkpoint taken apart, to be edited and written back.
#[derive(Clone)]
struct Ckpt {
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

impl Ckpt {
    fn read(path: &Path) -> Ckpt {
        let bytes = std::fs::read(path).expect("checkpoint");
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let tensors =
            st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
        Ckpt { tensors, meta: meta.metadata().clone().unwrap_or_default() }
    }

    /// Written with the `safetensors` crate: a valid safetensors file.
    fn write(&self, path: &Path) -> PathBuf {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(n, (d, shape, b))| (n.clone(), TensorView::new(*d, shape.clone(), b).expect("consistent tensor")))
            .collect();
        std::fs::write(path, safetensors::serialize(views, &Some(self.meta.clone())).unwrap()).unwrap();
        path.to_path_buf()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors[name].2.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn set(&mut self, name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) {
        self.tensors.insert(name.to_string(), (dtype, shape.to_vec(), data));
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `normlab eval` and `normlab inspect` refuse the checkpoint with exit code
/// 2 and a message holding every needle, and so does `checkpoint::load`.
fn refused(ck: &Path, needles: &[&str]) {
    let sub = subset();
    normlab(&["eval", "--checkpoint", s(ck), "--data-dir", s(&sub), "--limit", "64"]).user_error(needles);
    normlab(&["inspect", "--checkpoint", s(ck)]).user_error(needles);
    let err = match panic::catch_unwind(|| checkpoint::load(ck)) {
        Ok(Ok(_)) => panic!("checkpoint::load accepts {}", ck.display()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("checkpoint::load panics on {}", ck.display()),
    };
    for n in needles {
        assert!(err.contains(n), "checkpoint::load's error should mention '{n}': {err}");
    }
}

// ---------------------------------------------------------------- checkpoints

#[test]
fn checkpoint_whose_header_length_exceeds_the_file() {
    let good = std::fs::read(&trained().bn).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let len = good.len() as u64;
    for (name, claimed) in [
        ("past-end.safetensors", len - 7), // one byte more than follows the length
        ("megabyte.safetensors", len + (1 << 20)),
        ("huge.safetensors", u64::MAX),
        ("zero.safetensors", 0),
    ] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&claimed.to_le_bytes());
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        refused(&path, &[name]);
        // nothing is allocated from the claimed length
        let (r, largest) = largest_allocation(|| checkpoint::info(&path));
        assert!(r.is_err());
        assert!(largest <= 2 * good.len(), "{name}: checkpoint::info allocated {largest} bytes");
    }
    // shorter than the 8-byte length itself
    let stub = dir.path().join("stub.safetensors");
    std::fs::write(&stub, &good[..5]).unwrap();
    refused(&stub, &["stub.safetensors"]);
}

#[test]
fn checkpoint_tensor_with_the_wrong_shape() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    // same number of values, another shape
    let mut c = good.clone();
    let w = c.tensors["net.0.weight"].2.clone();
    c.set("net.0.weight", Dtype::F32, &[6, 25], w);
    refused(&c.write(&dir.path().join("reshaped.safetensors")), &["reshaped.safetensors", "net.0.weight", "[6, 25]"]);
    // one value more
    let mut c = good.clone();
    let mut v = c.f32s("net.1.running_mean");
    v.push(0.0);
    c.set("net.1.running_mean", Dtype::F32, &[7], f32_bytes(&v));
    refused(&c.write(&dir.path().join("seven.safetensors")), &["seven.safetensors", "net.1.running_mean"]);
    // a linear layer of another width (fewer values)
    let mut c = good.clone();
    c.set("net.9.weight", Dtype::F32, &[100, 256], f32_bytes(&vec![0.0; 100 * 256]));
    refused(&c.write(&dir.path().join("narrow.safetensors")), &["narrow.safetensors", "net.9.weight"]);
    // num_batches_tracked as a vector
    let mut c = good;
    c.set("net.5.num_batches_tracked", Dtype::I64, &[2], vec![0; 16]);
    refused(&c.write(&dir.path().join("counter.safetensors")), &["counter.safetensors", "net.5.num_batches_tracked"]);
}

#[test]
fn checkpoint_tensor_with_the_wrong_dtype() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    let w = good.f32s("net.0.weight");
    let cases: Vec<(&str, &str, Dtype, Vec<u8>)> = vec![
        // a double-precision model: the same values as f64
        ("f64", "net.0.weight", Dtype::F64, w.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect()),
        ("i32", "net.0.weight", Dtype::I32, w.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect()),
        ("f16", "net.0.weight", Dtype::F16, vec![0; w.len() * 2]),
        ("counter-f32", "net.1.num_batches_tracked", Dtype::F32, 4.0f32.to_le_bytes().to_vec()),
        ("counter-i32", "net.1.num_batches_tracked", Dtype::I32, 4i32.to_le_bytes().to_vec()),
    ];
    for (label, tensor, dtype, data) in cases {
        let mut c = good.clone();
        let shape = c.tensors[tensor].1.clone();
        c.set(tensor, dtype, &shape, data);
        let file = format!("{label}.safetensors");
        let path = c.write(&dir.path().join(&file));
        refused(&path, &[&file, tensor, &format!("{dtype:?}")]);
    }
}

#[test]
fn checkpoint_with_a_missing_or_an_unknown_tensor() {
    let good = Ckpt::read(&trained().bn);
    let dir = tempfile::tempdir().unwrap();
    let mut c = good.clone();
    c.tensors.remove("net.13.running_var");
    refused(&c.write(&dir.path().join("missing.safetensors")), &["missing.safetensors", "net.13.running_var"]);
    let mut c = good.clone();
    c.set("net.99.weight", Dtype::F32, &[2], vec![0; 8]);
    refused(&c.write(&dir.path().join("unknown.safetensors")), &["unknown.safetensors", "net.99.weight"]);
    // a misspelt name: one missing, one unknown, both named
    let mut c = good;
    let w = c.tensors.remove("net.0.weight").unwrap();
    c.tensors.insert("net.0.weights".into(), w);
    refused(
        &c.write(&dir.path().join("typo.safetensors")),
        &["typo.safetensors", "missing net.0.weight ", "net.0.weights"],
    );
}

#[test]
fn checkpoint_from_a_different_model() {
    let t = trained();
    let bn = Ckpt::read(&t.bn);
    let ln = Ckpt::read(&t.ln);
    let dir = tempfile::tempdir().unwrap();
    // ln-lenet weights whose metadata claims bn-lenet (name and network)
    let mut c = ln.clone();
    c.meta.insert("normlab.model".into(), "bn-lenet".into());
    c.meta.insert("normlab.network".into(), bn.meta["normlab.network"].clone());
    refused(
        &c.write(&dir.path().join("ln-as-bn.safetensors")),
        &["ln-as-bn.safetensors", "net.1.weight", "different model"],
    );
    // and the other way round
    let mut c = bn.clone();
    c.meta.insert("normlab.model".into(), "ln-lenet".into());
    c.meta.insert("normlab.network".into(), ln.meta["normlab.network"].clone());
    refused(&c.write(&dir.path().join("bn-as-ln.safetensors")), &["bn-as-ln.safetensors", "net.1.weight"]);
    // bn-lenet weights described as plain lenet: every BN tensor is unknown
    let mut c = bn;
    c.meta.insert("normlab.model".into(), "lenet".into());
    c.meta.insert("normlab.network".into(), serde_json::to_string(&ModelKind::Lenet.config()).unwrap());
    refused(&c.write(&dir.path().join("bn-as-lenet.safetensors")), &["bn-as-lenet.safetensors", "different model"]);
}

/// BUG (see the report): a checkpoint whose `normlab.model` names one of the
/// CLI's models while its `normlab.network` describes another loads
/// silently, and the commands then report the wrong model: `inspect` says
/// "(bn-lenet) has no batch-norm layers", `eval --json` says "model":
/// "bn-lenet" for a layer-norm network. Either refusing the file (exit 2,
/// naming it) or reporting the network it actually holds is correct.
#[test]
fn checkpoint_whose_model_name_contradicts_its_network() {
    let mut c = Ckpt::read(&trained().ln);
    c.meta.insert("normlab.model".into(), "bn-lenet".into());
    let dir = tempfile::tempdir().unwrap();
    let path = c.write(&dir.path().join("label.safetensors"));
    let sub = subset();
    for args in [
        vec!["inspect", "--checkpoint", s(&path)],
        vec!["eval", "--checkpoint", s(&path), "--data-dir", s(&sub), "--limit", "64", "--json"],
    ] {
        let r = normlab(&args);
        if r.code == 0 {
            assert!(
                !r.stdout.contains("bn-lenet"),
                "an ln-lenet network is reported as bn-lenet (the unchecked metadata name): {}",
                r.ctx()
            );
        } else {
            r.user_error(&["label.safetensors"]);
        }
    }
}

/// BUG (see the report): an invalid network description in the metadata
/// (dropout 2, eps -1, 0 groups, momentum 7) gives exit code 2, but the
/// message does not name the checkpoint: "error: invalid dropout p: 2 is not
/// in [0, 1)" reads as if an option were wrong. `checkpoint::load` passes
/// the error of `models::build_config` on without the path.
#[test]
fn checkpoint_with_an_invalid_network_description_names_the_file() {
    let good = Ckpt::read(&trained().bn);
    let network = good.meta["normlab.network"].clone();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("dropout", network.replace("\"dropout\":null", "\"dropout\":2.0")),
        ("eps", network.replace("\"eps\":0.00001", "\"eps\":-1.0")),
        ("momentum", network.replace("{\"NewStatWeight\":0.1}", "{\"NewStatWeight\":7.0}")),
        (
            "groups",
            network.replace(
                &network[network.find("{\"Batch\"").unwrap()..network.find(",\"placement\"").unwrap()],
                "{\"Group\":{\"groups\":0}}",
            ),
        ),
        ("garbage", "{\"norm\": 17}".to_string()),
    ];
    let mut failures = Vec::new();
    for (label, net) in cases {
        assert_ne!(net, network, "{label}: the replacement did not apply");
        let mut c = good.clone();
        c.meta.insert("normlab.network".into(), net);
        let file = format!("network-{label}.safetensors");
        let path = c.write(&dir.path().join(&file));
        let r = normlab(&["inspect", "--checkpoint", s(&path)]);
        assert!(!r.stderr.contains("panicked"), "{}", r.ctx());
        assert_eq!(r.code, 2, "{}", r.ctx());
        eprintln!("[{}] {}", r.args, r.stderr.trim_end());
        if !r.stderr.contains(&file) {
            failures.push(format!("{file}: {}", r.stderr.trim_end()));
        }
    }
    assert!(failures.is_empty(), "messages that do not name the checkpoint:\n{}", failures.join("\n"));
}

#[test]
fn checkpoint_with_non_finite_weights() {
    let mut c = Ckpt::read(&trained().bn);
    let mut v = c.f32s("net.5.running_var");
    v[3] = f32::NAN;
    c.set("net.5.running_var", Dtype::F32, &[16], f32_bytes(&v));
    let dir = tempfile::tempdir().unwrap();
    refused(&c.write(&dir.path().join("nan.safetensors")), &["nan.safetensors", "net.5.running_var", "NaN"]);
}

// ---------------------------------------------------------------- images

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A PNG written by hand: IHDR with these fields, the `extra` chunks, one
/// IDAT holding `scanlines` (each row already prefixed with its filter
/// byte) compressed, IEND.
fn png(width: u32, height: u32, depth: u8, color: u8, extra: &[(&[u8; 4], Vec<u8>)], scanlines: &[u8]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    for (kind, data) in extra {
        png_chunk(&mut out, kind, data);
    }
    png_chunk(&mut out, b"IDAT", &zlib(scanlines));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Rows of `w` pixels, each pixel given as its bytes, behind filter byte 0.
fn rows(pixels: &[Vec<u8>], w: usize) -> Vec<u8> {
    pixels.chunks(w).flat_map(|row| std::iter::once(0u8).chain(row.iter().flatten().copied())).collect()
}

/// 4-bit samples packed two to a byte, behind filter byte 0.
fn rows4(samples: &[u8], w: usize) -> Vec<u8> {
    samples
        .chunks(w)
        .flat_map(|row| {
            let packed: Vec<u8> = row.chunks(2).map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0)).collect();
            std::iter::once(0u8).chain(packed)
        })
        .collect()
}

fn jpeg(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode(pixels, w, h, color).unwrap();
    out
}

/// Overwrites the height and width of a JPEG's first SOF0/SOF2 segment.
fn set_jpeg_size(bytes: &mut [u8], w: u16, h: u16) -> bool {
    let Some(p) = bytes.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]) else { return false };
    if p + 9 > bytes.len() {
        return false;
    }
    bytes[p + 5..p + 7].copy_from_slice(&h.to_be_bytes());
    bytes[p + 7..p + 9].copy_from_slice(&w.to_be_bytes());
    true
}

/// The first `n` test images of the subset (28x28 grey bytes).
fn test_images(n: usize) -> Vec<Vec<u8>> {
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    (0..n).map(|i| fm.test.image(i).to_vec()).collect()
}

/// One grey image in every PNG flavour `predict` must accept. The bool says
/// whether the decoded grey levels equal the 8-bit original's exactly (so
/// the prediction must be the same).
fn png_variants(g: &[u8]) -> Vec<(&'static str, Vec<u8>, bool)> {
    let px = |f: &dyn Fn(u8) -> Vec<u8>| -> Vec<Vec<u8>> { g.iter().map(|&v| f(v)).collect() };
    // a palette whose entries are shuffled (167 is odd: a bijection of 0..256)
    let perm: Vec<u8> = (0..256u32).map(|k| ((k * 167 + 13) % 256) as u8).collect();
    let mut inv = [0u8; 256];
    for (k, &p) in perm.iter().enumerate() {
        inv[p as usize] = k as u8;
    }
    let plte: Vec<u8> = perm.iter().flat_map(|&p| [p, p, p]).collect();
    let trns: Vec<u8> = (0..256).map(|k| (255 - k / 2) as u8).collect();
    let plte16: Vec<u8> = (0..16u8).flat_map(|k| [k * 17; 3]).collect();
    let quant: Vec<u8> = g.iter().map(|&v| v >> 4).collect();
    vec![
        ("grey8", png(28, 28, 8, 0, &[], &rows(&px(&|v| vec![v]), 28)), true),
        ("grey16", png(28, 28, 16, 0, &[], &rows(&px(&|v| (v as u16 * 257).to_be_bytes().to_vec()), 28)), true),
        ("palette8", png(28, 28, 8, 3, &[(b"PLTE", plte.clone())], &rows(&px(&|v| vec![inv[v as usize]]), 28)), true),
        (
            "palette8-trns",
            png(28, 28, 8, 3, &[(b"PLTE", plte), (b"tRNS", trns)], &rows(&px(&|v| vec![inv[v as usize]]), 28)),
            true,
        ),
        ("palette4", png(28, 28, 4, 3, &[(b"PLTE", plte16)], &rows4(&quant, 28)), false),
        ("grey-alpha8", png(28, 28, 8, 4, &[], &rows(&px(&|v| vec![v, 255 - v]), 28)), true),
        (
            "grey-alpha16",
            png(28, 28, 16, 4, &[], &rows(&px(&|v| [(v as u16 * 257).to_be_bytes(), [0x80, 0]].concat()), 28)),
            true,
        ),
        ("rgba8", png(28, 28, 8, 6, &[], &rows(&px(&|v| vec![v, v, v, v / 2]), 28)), true),
        ("rgb16", png(28, 28, 16, 2, &[], &rows(&px(&|v| (v as u16 * 257).to_be_bytes().repeat(3)), 28)), true),
        (
            "rgba16",
            png(
                28,
                28,
                16,
                6,
                &[],
                &rows(&px(&|v| [(v as u16 * 257).to_be_bytes().repeat(3), vec![0xFF, 0xFF]].concat()), 28),
            ),
            true,
        ),
    ]
}

#[test]
fn sixteen_bit_palette_and_alpha_pngs_are_predicted() {
    let model = &trained().bn;
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, g) in test_images(3).iter().enumerate() {
        for (label, bytes, exact) in png_variants(g) {
            // every file decodes with the image crate as the expected kind
            let img = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!((img.width(), img.height()), (28, 28), "{label}");
            let path = dir.path().join(format!("{i}-{label}.png"));
            std::fs::write(&path, &bytes).unwrap();
            files.push((i, label, exact, path));
        }
    }
    let mut args = vec!["predict", "--checkpoint", s(model), "--json"];
    args.extend(files.iter().map(|f| s(&f.3)));
    let r = normlab(&args).ok();
    let lines: Vec<Value> = r.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), files.len(), "one line per image: {}", r.ctx());
    let top = |v: &Value| -> Vec<(String, f64)> {
        v["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["name"].as_str().unwrap().to_string(), t["probability"].as_f64().unwrap()))
            .collect()
    };
    for ((i, label, exact, _), line) in files.iter().zip(&lines) {
        let got = top(line);
        assert_eq!(got.len(), 3, "{label}: {line}");
        assert!(got.iter().all(|(n, p)| CLASS_NAMES.contains(&n.as_str()) && p.is_finite()), "{label}: {line}");
        if *exact {
            // the same grey levels as the 8-bit original of image i
            let base = top(&lines[files.iter().position(|f| f.0 == *i && f.1 == "grey8").unwrap()]);
            assert_eq!(got[0].0, base[0].0, "image {i} {label}: {line}");
            for ((_, p), (_, q)) in got.iter().zip(&base) {
                assert!((p - q).abs() < 1e-3, "image {i} {label}: {got:?} vs 8-bit grey {base:?}");
            }
        }
    }
    // the plain output prints class names too
    let mut args = vec!["predict", "--checkpoint", s(model)];
    args.extend(files.iter().filter(|f| f.0 == 0).map(|f| s(&f.3)));
    let r = normlab(&args).ok();
    assert_eq!(r.stdout.lines().count(), files.len() / 3);
    for line in r.stdout.lines() {
        assert!(CLASS_NAMES.iter().any(|c| line.contains(c)), "no class name in {line:?}");
    }
}

/// Peak RSS of `predict` on an ordinary 28x28 PNG, the yardstick for bombs.
fn predict_baseline_rss_kb(dir: &Path) -> i64 {
    let g = &test_images(1)[0];
    let path = dir.join("ordinary.png");
    std::fs::write(&path, &png_variants(g)[0].1).unwrap();
    normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]).ok().max_rss_kb
}

#[test]
fn a_png_declaring_100000_by_100000_pixels_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = predict_baseline_rss_kb(dir.path());
    // a correct IHDR for 100000 x 100000 grey, then the start of one row
    let bomb = png(100_000, 100_000, 8, 0, &[], &vec![0u8; 100_001]);
    assert!(bomb.len() < 1000, "{} bytes", bomb.len());
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, &bomb).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    r.user_error(&["bomb.png", "too large"]);
    assert!(r.wall < Duration::from_secs(2), "{}", r.ctx());
    assert!(r.max_rss_kb < baseline + 32 * 1024, "baseline {baseline} kB: {}", r.ctx());
    eprintln!("bomb.png: {:.3?}, peak RSS {} kB (ordinary image {baseline} kB)", r.wall, r.max_rss_kb);

    // the same for a JPEG header at the format's maximum, 65535 x 65535
    let mut jpg = jpeg(&[128; 16 * 16], 16, 16, image::ExtendedColorType::L8);
    assert!(set_jpeg_size(&mut jpg, 65535, 65535));
    let path = dir.path().join("bomb.jpg");
    std::fs::write(&path, &jpg).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    r.user_error(&["bomb.jpg", "too large"]);
    assert!(r.wall < Duration::from_secs(2) && r.max_rss_kb < baseline + 32 * 1024, "{}", r.ctx());
}

/// BUG (see the report): a 333-byte JPEG whose SOF header declares 8192 x
/// 8192 grey pixels (the scan holds 16 x 16) is inside predict's limits
/// (16384 a side, 256 MiB decoded), so zune-jpeg "decodes" it, filling the
/// missing data, and `load_image` converts it with `to_luma32f`: 4 bytes a
/// pixel, outside the 256 MiB budget. predict succeeds on a damaged file
/// after ~1.5 s and ~330 MB; at 16384 x 16384 it takes 5.5 s and 1.3 GB.
/// Correct: refused with exit code 2 (the scan is truncated), fast, with
/// memory within the documented limit.
#[test]
fn a_tiny_jpeg_declaring_a_huge_size_inside_the_limits_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = predict_baseline_rss_kb(dir.path());
    let mut jpg = jpeg(&[128; 16 * 16], 16, 16, image::ExtendedColorType::L8);
    assert!(set_jpeg_size(&mut jpg, 8192, 8192));
    let path = dir.path().join("small-bomb.jpg");
    std::fs::write(&path, &jpg).unwrap();
    let r = normlab(&["predict", "--checkpoint", s(&trained().bn), s(&path)]);
    eprintln!(
        "small-bomb.jpg ({} bytes): exit {} in {:.2?}, peak RSS {} MB (ordinary image {} MB)",
        jpg.len(),
        r.code,
        r.wall,
        r.max_rss_kb / 1024,
        baseline / 1024
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.ctx());
    assert!(
        r.max_rss_kb < baseline + (PREDICT_MAX_ALLOC / 1024) as i64,
        "a {}-byte file costs more memory than predict's 256 MiB decoding limit: {}",
        jpg.len(),
        r.ctx()
    );
    assert!(r.wall < Duration::from_secs(2), "{}", r.ctx());
    r.user_error(&["small-bomb.jpg"]);
}

// ---------------------------------------------------------------- disk full
//
// `/dev/full` accepts `open` and fails every `write` with ENOSPC. A symbolic
// link to it, named like the temporary file `write_atomic` writes beside its
// target, makes that write fail as on a full disk. It simulates the failing
// data write only: on a really full file system the creation of the
// temporary file, the rename or the directory sync may fail instead, and
// other files written before (metrics.csv) would be affected too.

fn dev_full() -> bool {
    let ok = Path::new("/dev/full").exists();
    if !ok {
        eprintln!("skipped: no /dev/full on this machine");
    }
    ok
}

#[test]
fn write_atomic_on_a_full_disk_fails_and_keeps_the_old_file() {
    if !dev_full() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("model.safetensors");
    std::fs::write(&target, b"the previous, good checkpoint").unwrap();
    let tmp = temp_path(&target);
    assert_eq!(tmp.parent(), target.parent(), "the temporary file is beside its target");
    std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
    let err = write_atomic(&target, &vec![7u8; 1 << 20]).expect_err("a write to a full disk must fail");
    let msg = err.to_string();
    assert!(msg.contains(s(&target)), "the error names the file: {msg}");
    assert!(msg.contains("No space left on device"), "the error says why: {msg}");
    assert_eq!(std::fs::read(&target).unwrap(), b"the previous, good checkpoint", "the old file is untouched");
    assert!(std::fs::symlink_metadata(&tmp).is_err(), "the temporary file is removed");
    // and with nothing there before, nothing is left
    let fresh = dir.path().join("fresh.safetensors");
    std::os::unix::fs::symlink("/dev/full", temp_path(&fresh)).unwrap();
    assert!(write_atomic(&fresh, b"x").is_err());
    assert!(!fresh.exists() && std::fs::symlink_metadata(temp_path(&fresh)).is_err());
}

/// A `pre_exec` hook that links `write_atomic`'s temporary file for
/// `target`, as the child (whose pid is in the name) will call it, to
/// `/dev/full`. Everything is prepared before the fork; the hook only
/// formats digits on the stack and calls symlink(2).
fn full_disk_for(target: &Path) -> PreExec {
    let ours = temp_path(target);
    let prefix = ours
        .as_os_str()
        .as_bytes()
        .strip_suffix(std::process::id().to_string().as_bytes())
        .expect("the temporary name ends with the pid")
        .to_vec();
    assert!(prefix.len() < 4000);
    Box::new(move || {
        let mut buf = [0u8; 4096];
        buf[..prefix.len()].copy_from_slice(&prefix);
        // SAFETY: getpid and symlink are async-signal-safe.
        let mut pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            pid /= 10;
            n += 1;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            buf[prefix.len() + i] = digits[n - 1 - i];
        }
        let r = unsafe { libc::symlink(c"/dev/full".as_ptr(), buf.as_ptr().cast()) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })
}

fn temporaries_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn recompute_stats_on_a_full_disk_keeps_the_old_output() {
    if !dev_full() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("precise.safetensors");
    std::fs::copy(&trained().ln, &out).unwrap();
    let before = std::fs::read(&out).unwrap();
    let sub = subset();
    let args = ["recompute-stats", "--checkpoint", s(&trained().bn), "--out", s(&out), "--data-dir", s(&sub)];
    let r = normlab_with(&args, Some(full_disk_for(&out)));
    r.user_error(&["precise.safetensors", "No space left on device"]);
    assert_eq!(std::fs::read(&out).unwrap(), before, "the existing output is untouched");
    assert_eq!(temporaries_in(dir.path()), Vec::<String>::new(), "no temporary file is left");
}

#[test]
fn train_on_a_full_disk_is_a_one_line_error() {
    if !dev_full() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    std::fs::create_dir(&out).unwrap();
    let sub = subset();
    let args = [
        "train",
        "--limit-train",
        "128",
        "--limit-val",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--quiet",
        "--data-dir",
        s(&sub),
        "--out",
        s(&out),
    ];
    let r = normlab_with(&args, Some(full_disk_for(&out.join("model.safetensors"))));
    // (without --json, train prints its per-epoch lines on stdout)
    r.fails_with(&["model.safetensors", "No space left on device"]);
    assert!(!out.join("model.safetensors").exists(), "no half-written model");
    assert_eq!(temporaries_in(&out), Vec::<String>::new(), "no temporary file is left");
}

// ---------------------------------------------------------------- mutation testing

/// One random change to a file.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, u16),
    /// Copies `len` bytes from one place to another (inserting).
    Duplicate(Index, u16, Index),
    /// Writes an extreme integer of 1, 2, 4 or 8 bytes, big- or little-endian.
    Extreme(Index, u8, bool, u64),
}

fn extreme() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(28),
        Just(255),
        Just(256),
        Just(0x7fff),
        Just(0xffff),
        Just(16_384),
        Just(100_000),
        Just(0x7fff_ffff),
        Just(0x8000_0000),
        Just(0xffff_ffff),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1u16..512).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1u16..4096, any::<Index>()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        2 => (any::<Index>(), 0u8..4, any::<bool>(), extreme()).prop_map(|(i, w, be, v)| Mutation::Extreme(i, w, be, v)),
    ]
}

fn at(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len)
    }
}

/// Applies `m` to `bytes`, with positions drawn from the first `window`
/// bytes (the whole file when `window` is `None`).
fn apply(bytes: &mut Vec<u8>, m: &Mutation, window: Option<usize>) {
    let w = window.unwrap_or(bytes.len()).min(bytes.len());
    match m {
        Mutation::Flip(i, b) if w > 0 => bytes[at(i, w)] ^= 1 << b,
        Mutation::Set(i, v) if w > 0 => bytes[at(i, w)] = *v,
        Mutation::Truncate(i) => bytes.truncate(at(i, w + 1)),
        Mutation::Insert(i, v) => {
            let p = at(i, w + 1);
            bytes.splice(p..p, v.iter().copied());
        }
        Mutation::Delete(i, n) if w > 0 => {
            let p = at(i, w);
            let end = (p + *n as usize).min(bytes.len());
            bytes.drain(p..end);
        }
        Mutation::Duplicate(a, n, b) if w > 0 => {
            let p = at(a, w);
            let end = (p + *n as usize).min(bytes.len());
            let piece = bytes[p..end].to_vec();
            let q = at(b, w + 1);
            bytes.splice(q..q, piece);
        }
        Mutation::Extreme(i, width, be, v) if w > 0 => {
            let width = [1usize, 2, 4, 8][*width as usize % 4];
            let le = v.to_le_bytes();
            let value: Vec<u8> = if *be { le[..width].iter().rev().copied().collect() } else { le[..width].to_vec() };
            let p = at(i, w);
            for (k, b) in value.into_iter().enumerate() {
                if let Some(slot) = bytes.get_mut(p + k) {
                    *slot = b;
                }
            }
        }
        _ => {}
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("valid gzip");
    out
}

/// How much to run: `NORMLAB_FUZZ_CASES` cases (300 by default) or, with
/// `NORMLAB_FUZZ_SECS`, for that long.
fn budget() -> (u64, Option<Duration>, u64) {
    let var = |k: &str| std::env::var(k).ok().map(|v| v.parse::<u64>().unwrap_or_else(|e| panic!("{k}={v}: {e}")));
    let secs = var("NORMLAB_FUZZ_SECS").map(Duration::from_secs);
    let cases = var("NORMLAB_FUZZ_CASES").unwrap_or(if secs.is_some() { u64::MAX } else { 300 });
    (cases, secs, var("NORMLAB_FUZZ_SEED").unwrap_or(0))
}

enum Verdict {
    Ok,
    Err,
    /// The parser said Ok to something inconsistent.
    Wrong(String),
}

struct Target<'a> {
    name: &'a str,
    /// Slower than this is a failure (a hang in the making).
    time_bound: Duration,
    /// The largest allocation an input justifies.
    alloc_bound: &'a dyn Fn(&[u8]) -> usize,
    run: &'a dyn Fn(&[u8]) -> Verdict,
    /// A short description of a problem input, to tally problems by cause.
    describe: &'a dyn Fn(&[u8]) -> String,
}

fn failures_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("normlab-fuzz-failures");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Generates cases with proptest (no shrinking: each case is independent and
/// a slow one would be retried for long), runs the target on each under
/// `catch_unwind`, and fails at the end if any case panicked, ran longer
/// than the bound, allocated more than the input justifies, or was accepted
/// while inconsistent. A watchdog aborts the process (saving the input) if
/// one case runs 60 seconds.
fn fuzz<C: Debug>(target: Target<'_>, strategy: impl Strategy<Value = C>, input: impl Fn(&C) -> Vec<u8>) {
    let (cases, secs, seed) = budget();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..8 + target.name.len().min(24)].copy_from_slice(&target.name.as_bytes()[..target.name.len().min(24)]);
    let mut runner = TestRunner::new_with_rng(
        Config { failure_persistence: None, ..Config::default() },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let current: Arc<Mutex<(Option<Instant>, Vec<u8>)>> = Arc::new(Mutex::new((None, Vec::new())));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, done, name) = (current.clone(), done.clone(), target.name.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let c = current.lock().unwrap();
                if c.0.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
                    let p = failures_dir().join(format!("{name}-hang.bin"));
                    let _ = std::fs::write(&p, &c.1);
                    eprintln!("fuzz {name}: one input runs for more than 60 s (a hang), saved to {}", p.display());
                    std::process::abort();
                }
            }
        })
    };
    let start = Instant::now();
    let (mut execs, mut ok, mut err) = (0u64, 0u64, 0u64);
    let mut problems: Vec<String> = Vec::new();
    let (mut slowest, mut largest_seen) = (Duration::ZERO, 0usize);
    // every problem counted by kind and cause; the first 50 kept in full
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut record = |kind: &str, detail: String, bytes: &[u8], execs: u64| {
        *tally.entry(format!("{kind}: {}", (target.describe)(bytes))).or_default() += 1;
        if problems.len() < 50 {
            let p = failures_dir().join(format!("{}-{kind}-{execs}.bin", target.name));
            let _ = std::fs::write(&p, bytes);
            problems.push(format!("{kind}: {detail} (input saved to {})", p.display()));
        }
    };
    while execs < cases && secs.is_none_or(|d| start.elapsed() < d) {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let bytes = input(&case);
        *current.lock().unwrap() = (Some(Instant::now()), bytes.clone());
        let t = Instant::now();
        let (verdict, largest) = largest_allocation(|| panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&bytes))));
        let dt = t.elapsed();
        current.lock().unwrap().0 = None;
        execs += 1;
        slowest = slowest.max(dt);
        largest_seen = largest_seen.max(largest);
        match verdict {
            Ok(Verdict::Ok) => ok += 1,
            Ok(Verdict::Err) => err += 1,
            Ok(Verdict::Wrong(why)) => record("wrong", why, &bytes, execs),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                record("panic", format!("{msg} on {case:?}"), &bytes, execs);
            }
        }
        if dt > target.time_bound {
            record("slow", format!("{dt:.2?} on {} bytes", bytes.len()), &bytes, execs);
        }
        let bound = (target.alloc_bound)(&bytes);
        if largest > bound {
            record(
                "alloc",
                format!("{largest} bytes allocated at once for a {}-byte input (bound {bound})", bytes.len()),
                &bytes,
                execs,
            );
        }
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    let total: u64 = tally.values().sum();
    eprintln!(
        "fuzz {}: {execs} executions in {:.1?} ({:.0}/s): {ok} Ok, {err} Err, {total} problems {tally:?}; slowest case {slowest:.2?}, largest allocation {:.1} MiB",
        target.name,
        elapsed,
        execs as f64 / elapsed.as_secs_f64(),
        largest_seen as f64 / (1 << 20) as f64
    );
    assert!(
        problems.is_empty(),
        "fuzz {}: {total} problem(s) {tally:?}, the first:\n{}",
        target.name,
        problems.join("\n")
    );
}

/// The seed files of one corpus directory, gzip-compressed ones expanded
/// when `expand_gz`.
fn corpus_seeds(kind: &str, expand_gz: bool) -> Vec<Vec<u8>> {
    let dir = corpus().join(kind);
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let b = std::fs::read(p).unwrap();
            if expand_gz && b.starts_with(&[0x1f, 0x8b]) {
                gunzip(&b)
            } else {
                b
            }
        })
        .collect()
}

// ------------------------------------------------------------------ IDX

#[derive(Clone, Debug)]
struct IdxCase {
    seed: Index,
    /// (header field 0..4 as a big-endian u32 at 4 * field, value)
    header: Vec<(u8, u64)>,
    raw: Vec<Mutation>,
    gzip: bool,
    compressed: Vec<Mutation>,
}

/// Raw IDX seeds: a few hundred images and labels of the subset, and the
/// corpus (gzip seeds expanded; the case decides whether to compress).
fn idx_seeds() -> Vec<Vec<u8>> {
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    let n = 300;
    let mut seeds = vec![
        idx::encode_images(&fm.train.images[..n * 784], n, 28, 28),
        idx::encode_labels(&fm.train.labels[..n]),
        idx::encode_images(&fm.test.images[..10 * 784], 10, 28, 28),
        idx::encode_labels(&fm.test.labels[..10]),
    ];
    seeds.extend(corpus_seeds("idx", true));
    seeds
}

/// The decoded length of an IDX input (gzip expanded, capped), for the
/// allocation bound: reading may take twice what it holds (Vec doubling).
fn decoded_len(bytes: &[u8]) -> usize {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut n = 0usize;
        let mut d = MultiGzDecoder::new(bytes);
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = d.read(&mut buf) {
            if k == 0 || n > (idx::MAX_DATA_BYTES as usize) {
                break;
            }
            n += k;
        }
        n
    } else {
        bytes.len()
    }
}

#[test]
fn fuzz_idx_parsers() {
    let seeds = idx_seeds();
    let path = Path::new("fuzz.idx");
    let run = |bytes: &[u8]| {
        let images = idx::parse_images(bytes, path);
        let labels = idx::parse_labels(bytes, path);
        if let Ok(im) = &images {
            if im.bytes.len() != im.n * im.rows * im.cols {
                return Verdict::Wrong(format!("{} bytes for {} x {} x {}", im.bytes.len(), im.n, im.rows, im.cols));
            }
        }
        for e in [images.as_ref().err(), labels.as_ref().err()].into_iter().flatten() {
            let m = e.to_string();
            if !m.contains("fuzz.idx") {
                return Verdict::Wrong(format!("message does not name the file: {m}"));
            }
        }
        if images.is_ok() || labels.is_ok() {
            Verdict::Ok
        } else {
            Verdict::Err
        }
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec((0u8..4, extreme()), 0..3),
        prop::collection::vec(mutation(), 0..4),
        any::<bool>(),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(seed, header, raw, gzip, compressed)| IdxCase { seed, header, raw, gzip, compressed });
    fuzz(
        Target {
            name: "idx",
            time_bound: Duration::from_secs(2),
            alloc_bound: &|b| 2 * decoded_len(b) + (1 << 20),
            run: &run,
            describe: &|b| if b.starts_with(&[0x1f, 0x8b]) { "gzip".into() } else { "raw".into() },
        },
        strategy,
        |c: &IdxCase| {
            let mut b = seeds[c.seed.index(seeds.len())].clone();
            for &(field, v) in &c.header {
                let p = 4 * field as usize;
                if p + 4 <= b.len() {
                    b[p..p + 4].copy_from_slice(&(v as u32).to_be_bytes());
                }
            }
            for m in &c.raw {
                apply(&mut b, m, None);
            }
            if c.gzip {
                b = gzip(&b);
                for m in &c.compressed {
                    apply(&mut b, m, None);
                }
            }
            b
        },
    );
}

// ------------------------------------------------------------------ checkpoints

/// A safetensors file from a JSON header and a data section, as is (no
/// validation, so that the mutations can break every rule).
fn safetensors_raw(header: &Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// The JSON header and the data section of a valid safetensors file.
fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).expect("JSON header"), bytes[8 + n..].to_vec())
}

/// A structure-aware change to a checkpoint's JSON header.
#[derive(Clone, Debug)]
enum JsonMutation {
    /// Replaces a node (object, array or leaf) of the header with a value.
    HeaderNode(Index, Index),
    /// The same inside the metadata's network description.
    NetworkNode(Index, Index),
    RemoveTensor(Index),
    RenameTensor(Index, Index),
    DuplicateTensor(Index),
    /// Sets or removes a metadata entry.
    Meta(Index, Option<Index>),
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::HeaderNode(a, b)),
        4 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::NetworkNode(a, b)),
        1 => any::<Index>().prop_map(JsonMutation::RemoveTensor),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| JsonMutation::RenameTensor(a, b)),
        1 => any::<Index>().prop_map(JsonMutation::DuplicateTensor),
        1 => (any::<Index>(), proptest::option::of(any::<Index>())).prop_map(|(a, b)| JsonMutation::Meta(a, b)),
    ]
}

/// Values a mutated JSON node may take: extremes, wrong types, the names of
/// normlab's enums, dtypes, shapes and offsets.
fn json_pool() -> Vec<Value> {
    let mut pool = vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(0.5),
        json!(1e-300),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(4294967296u64),
        json!(null),
        json!(true),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!([0]),
        json!([6]),
        json!([6, 1, 5, 5]),
        json!([0, 0]),
        json!([0, 24]),
        json!([u64::MAX]),
        json!([4294967296u64, 4294967296u64]),
        json!([0, u64::MAX]),
        json!([u64::MAX, 0]),
        json!([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        json!({"NewStatWeight": 0.1}),
        json!({"OldStatWeight": 0.99}),
        json!({"NewStatWeight": -1.0}),
        json!({"Group": {"groups": 0}}),
        json!({"Group": {"groups": 2}}),
        json!({"Group": {"groups": 3}}),
        json!({"Group": {"groups": u64::MAX}}),
    ];
    for s in [
        "None",
        "Layer",
        "Batch",
        "BeforeActivation",
        "AfterActivation",
        "Sigmoid",
        "ReLU",
        "Fused",
        "Scratch",
        "Unbiased",
        "Biased",
        "Full",
        "CenterOnly",
        "ScaleOnly",
        "CumulativeAverage",
        "F32",
        "F64",
        "F16",
        "BF16",
        "I64",
        "I32",
        "U8",
        "BOOL",
        "F8_E4M3",
    ] {
        pool.push(json!(s));
    }
    for kind in ModelKind::ALL {
        let config = serde_json::to_value(kind.config()).unwrap();
        pool.push(config["norm"].clone());
        pool.push(json!(serde_json::to_string(&config).unwrap()));
        pool.push(json!(kind.name()));
    }
    pool
}

/// JSON pointers of every node under `v`.
fn pointers(v: &Value, here: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(x, format!("{here}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{here}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(here);
}

fn replace_node(v: &mut Value, node: &Index, value: &Value) {
    let mut ps = Vec::new();
    pointers(v, String::new(), &mut ps);
    let p = &ps[node.index(ps.len())];
    if p.is_empty() {
        *v = value.clone();
    } else if let Some(slot) = v.pointer_mut(p) {
        *slot = value.clone();
    }
}

fn tensor_names(header: &Value) -> Vec<String> {
    header.as_object().map(|m| m.keys().filter(|k| *k != "__metadata__").cloned().collect()).unwrap_or_default()
}

fn mutate_header(header: &mut Value, m: &JsonMutation, pool: &[Value]) {
    const NAMES: [&str; 6] =
        ["net.99.weight", "", "__metadata__", "net.0.weight", "optimizer.momentum.net.0.weight", "net.1"];
    const KEYS: [&str; 5] = ["normlab.model", "normlab.network", "normlab.version", "format", "epoch"];
    let names = tensor_names(header);
    let Some(obj) = header.as_object_mut() else { return };
    match m {
        JsonMutation::HeaderNode(node, value) => replace_node(header, node, &pool[value.index(pool.len())]),
        JsonMutation::NetworkNode(node, value) => {
            let Some(text) = obj.get("__metadata__").and_then(|m| m.get("normlab.network")).and_then(Value::as_str)
            else {
                return;
            };
            let Ok(mut net) = serde_json::from_str::<Value>(text) else { return };
            replace_node(&mut net, node, &pool[value.index(pool.len())]);
            obj["__metadata__"]["normlab.network"] = json!(net.to_string());
        }
        JsonMutation::RemoveTensor(i) if !names.is_empty() => {
            obj.remove(&names[i.index(names.len())]);
        }
        JsonMutation::RenameTensor(i, to) if !names.is_empty() => {
            if let Some(v) = obj.remove(&names[i.index(names.len())]) {
                obj.insert(NAMES[to.index(NAMES.len())].to_string(), v);
            }
        }
        JsonMutation::DuplicateTensor(i) if !names.is_empty() => {
            let v = obj[&names[i.index(names.len())]].clone();
            obj.insert("net.77.weight".into(), v);
        }
        JsonMutation::Meta(key, value) => {
            let key = KEYS[key.index(KEYS.len())];
            if let Some(meta) = obj.get_mut("__metadata__").and_then(Value::as_object_mut) {
                match value {
                    None => {
                        meta.remove(key);
                    }
                    Some(v) => {
                        let v = &pool[v.index(pool.len())];
                        meta.insert(key.into(), v.as_str().map(|s| json!(s)).unwrap_or_else(|| json!(v.to_string())));
                    }
                }
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
struct CheckpointCase {
    seed: Index,
    json: Vec<JsonMutation>,
    bytes: Vec<Mutation>,
    /// Draw the byte mutations' positions from the 8-byte length and the
    /// JSON header only (the data section only holds weights).
    in_header: bool,
}

/// Checkpoint seeds: the four models as `checkpoint::to_bytes` writes them
/// (initial weights), the two trained checkpoints, and the corpus.
fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for kind in ModelKind::ALL {
        let mut net = models::build(kind, &mut rng::seeded(1)).unwrap();
        seeds.push(checkpoint::to_bytes(&mut net, kind.name(), &kind.config(), &[("epoch", "1".into())]).unwrap());
    }
    seeds.push(std::fs::read(&trained().bn).unwrap());
    seeds.push(std::fs::read(&trained().ln).unwrap());
    seeds.extend(corpus_seeds("checkpoint", true));
    seeds
}

#[test]
fn fuzz_checkpoint_loader() {
    let seeds = checkpoint_seeds();
    let parsed: Vec<Option<(Value, Vec<u8>)>> = seeds
        .iter()
        .map(|b| panic::catch_unwind(|| split_safetensors(b)).ok().filter(|(h, _)| h.is_object()))
        .collect();
    let pool = json_pool();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzz.safetensors");
    // the largest allocation of a valid load: the network's own buffers
    let valid = seeds
        .iter()
        .map(|b| {
            std::fs::write(&file, b).unwrap();
            largest_allocation(|| checkpoint::load(&file).map(|_| ())).1
        })
        .max()
        .unwrap();
    let bn = std::cell::RefCell::new(models::bn_lenet::<f32>(&mut rng::seeded(0)).unwrap());
    // errors that do not name the file, by kind (the invalid network
    // descriptions of the dedicated test): counted and printed, not failed
    let unnamed: std::cell::RefCell<BTreeMap<String, u64>> = Default::default();
    let run = |bytes: &[u8]| {
        std::fs::write(&file, bytes).unwrap();
        let info = checkpoint::info(&file);
        let load = checkpoint::load(&file);
        let into = checkpoint::load_into(&mut bn.borrow_mut(), &file);
        for e in [info.as_ref().err(), load.as_ref().err(), into.as_ref().err()].into_iter().flatten() {
            let m = e.to_string();
            if m.is_empty() {
                return Verdict::Wrong("an empty error message".into());
            }
            if !m.contains(s(&file)) {
                let kind: String = m.split(':').next().unwrap_or_default().chars().take(40).collect();
                *unnamed.borrow_mut().entry(kind).or_default() += 1;
            }
        }
        match load {
            Ok((mut net, _)) => {
                // what a loaded model must be able to do: predict
                net.eval();
                match net.forward(&Tensor::zeros(&[1, 1, 28, 28])) {
                    Ok(y) if y.shape() == [1, 10] => Verdict::Ok,
                    Ok(y) => Verdict::Wrong(format!("a loaded model outputs {:?}", y.shape())),
                    Err(e) => Verdict::Wrong(format!("a loaded model cannot predict: {e}")),
                }
            }
            Err(_) if info.is_ok() || into.is_ok() => Verdict::Ok,
            Err(_) => Verdict::Err,
        }
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec(json_mutation(), 0..3),
        prop::collection::vec(mutation(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(seed, json, bytes, in_header)| CheckpointCase { seed, json, bytes, in_header });
    fuzz(
        Target {
            name: "checkpoint",
            time_bound: Duration::from_secs(2),
            alloc_bound: &|b| valid.max(2 * b.len()) + (1 << 20),
            run: &run,
            describe: &|_| "checkpoint".into(),
        },
        strategy,
        |c: &CheckpointCase| {
            let i = c.seed.index(seeds.len());
            let mut b = match (&parsed[i], c.json.is_empty()) {
                (Some((header, data)), false) => {
                    let mut h = header.clone();
                    for m in &c.json {
                        mutate_header(&mut h, m, &pool);
                    }
                    safetensors_raw(&h, data)
                }
                _ => seeds[i].clone(),
            };
            let header_end = if b.len() >= 8 {
                (u64::from_le_bytes(b[..8].try_into().unwrap()) as usize).saturating_add(8).min(b.len())
            } else {
                b.len()
            };
            for m in &c.bytes {
                apply(&mut b, m, c.in_header.then_some(header_end));
            }
            b
        },
    );
    eprintln!("fuzz checkpoint: errors that do not name the file, by kind: {:?}", unnamed.borrow());
}

// ------------------------------------------------------------------ images

/// `load_image` of src/cli/predict.rs, step by step: guess the format,
/// decode under predict's limits, convert to grey f32, resize to 28x28.
fn load_image_like_predict(bytes: &[u8]) -> Result<Vec<f32>, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a PNG or JPEG image".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(PREDICT_MAX_SIDE);
    limits.max_image_height = Some(PREDICT_MAX_SIDE);
    limits.max_alloc = Some(PREDICT_MAX_ALLOC);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| e.to_string())?;
    let grey = img.to_luma32f();
    let small = image::imageops::resize(&grey, 28, 28, image::imageops::FilterType::Triangle);
    Ok(small.pixels().map(|p| p.0[0].clamp(0.0, 1.0)).collect())
}

/// A structure-aware change to an image header: PNG's IHDR (with its CRC
/// fixed) or JPEG's SOF.
#[derive(Clone, Debug)]
struct HeaderField(u8, u64);

#[derive(Clone, Debug)]
struct ImageCase {
    seed: Index,
    header: Vec<HeaderField>,
    bytes: Vec<Mutation>,
    /// Recompute every PNG chunk's CRC after the byte mutations, so that
    /// they reach the decoder instead of the checksum test.
    fix_crc: bool,
}

fn fix_png_crcs(b: &mut [u8]) {
    let mut p = 8;
    while p + 12 <= b.len() {
        let n = u32::from_be_bytes(b[p..p + 4].try_into().unwrap()) as usize;
        let Some(end) = (p + 8).checked_add(n).filter(|&e| e + 4 <= b.len()) else { break };
        let mut crc = flate2::Crc::new();
        crc.update(&b[p + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        p = end + 4;
    }
}

fn set_header_field(b: &mut [u8], HeaderField(field, v): &HeaderField) {
    if b.starts_with(b"\x89PNG") && b.len() >= 33 {
        match field % 5 {
            0 => b[16..20].copy_from_slice(&(*v as u32).to_be_bytes()),
            1 => b[20..24].copy_from_slice(&(*v as u32).to_be_bytes()),
            2 => b[24] = [1, 2, 4, 8, 16, *v as u8][(*v % 6) as usize],
            3 => b[25] = [0, 2, 3, 4, 6, *v as u8][(*v % 6) as usize],
            _ => b[28] = (*v % 3) as u8,
        }
        let mut crc = flate2::Crc::new();
        crc.update(&b[12..29]);
        b[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    } else if let Some(p) = b.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]) {
        if p + 10 <= b.len() {
            match field % 4 {
                0 => b[p + 7..p + 9].copy_from_slice(&(*v as u16).to_be_bytes()),
                1 => b[p + 5..p + 7].copy_from_slice(&(*v as u16).to_be_bytes()),
                2 => b[p + 4] = *v as u8,
                _ => b[p + 9] = *v as u8,
            }
        }
    }
}

/// "PNG"/"JPEG" with the declared size, rounded to powers of two of
/// megapixels, and the number of JPEG components.
fn describe_image(b: &[u8]) -> String {
    let (kind, w, h, extra) = if b.starts_with(b"\x89PNG") && b.len() >= 26 {
        let w = u32::from_be_bytes(b[16..20].try_into().unwrap()) as u64;
        let h = u32::from_be_bytes(b[20..24].try_into().unwrap()) as u64;
        ("PNG", w, h, format!("colour type {}", b[25]))
    } else if let Some(p) =
        b.windows(2).position(|m| m == [0xFF, 0xC0] || m == [0xFF, 0xC2]).filter(|p| p + 10 <= b.len())
    {
        let h = u16::from_be_bytes([b[p + 5], b[p + 6]]) as u64;
        let w = u16::from_be_bytes([b[p + 7], b[p + 8]]) as u64;
        ("JPEG", w, h, format!("{} components", b[p + 9]))
    } else {
        return "other".into();
    };
    let mpx = (w * h) as f64 / 1e6;
    let bucket =
        if mpx < 1.0 { "< 1 Mpx".to_string() } else { format!(">= {} Mpx", 1u64 << (mpx.log2().floor() as u32)) };
    format!("{kind} declaring {bucket}, {extra}")
}

/// Image seeds: real Fashion-MNIST images as PNG (every flavour) and JPEG
/// (grey, colour, enlarged), and the corpus.
fn image_seeds() -> Vec<Vec<u8>> {
    let imgs = test_images(2);
    let mut seeds: Vec<Vec<u8>> = png_variants(&imgs[0]).into_iter().map(|v| v.1).collect();
    seeds.push(jpeg(&imgs[1], 28, 28, image::ExtendedColorType::L8));
    let rgb: Vec<u8> = imgs[1].iter().enumerate().flat_map(|(i, &v)| [v, (i % 256) as u8, 255 - v]).collect();
    seeds.push(jpeg(&rgb, 28, 28, image::ExtendedColorType::Rgb8));
    let big = image::imageops::resize(
        &image::GrayImage::from_raw(28, 28, imgs[0].clone()).unwrap(),
        160,
        120,
        image::imageops::FilterType::Triangle,
    );
    seeds.push(jpeg(big.as_raw(), 160, 120, image::ExtendedColorType::L8));
    let mut png_big = Cursor::new(Vec::new());
    big.write_to(&mut png_big, image::ImageFormat::Png).unwrap();
    seeds.push(png_big.into_inner());
    seeds.extend(corpus_seeds("image", false));
    seeds
}

#[test]
fn fuzz_image_decoder() {
    let seeds = image_seeds();
    let run = |bytes: &[u8]| match load_image_like_predict(bytes) {
        Ok(v) if v.len() == 784 && v.iter().all(|x| x.is_finite()) => Verdict::Ok,
        Ok(v) => Verdict::Wrong(format!("{} values, finite: {}", v.len(), v.iter().all(|x| x.is_finite()))),
        Err(_) => Verdict::Err,
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec((0u8..5, extreme()).prop_map(|(f, v)| HeaderField(f, v)), 0..3),
        prop::collection::vec(mutation(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(seed, header, bytes, fix_crc)| ImageCase { seed, header, bytes, fix_crc });
    fuzz(
        Target {
            name: "image",
            // a legitimate 16384 x 16384 image takes seconds; the seeds are
            // small, so anything near that comes from a header that lies
            time_bound: Duration::from_secs(2),
            // predict's own budget for a decoded image
            alloc_bound: &|_| PREDICT_MAX_ALLOC as usize,
            run: &run,
            describe: &describe_image,
        },
        strategy,
        |c: &ImageCase| {
            let mut b = seeds[c.seed.index(seeds.len())].clone();
            for h in &c.header {
                set_header_field(&mut b, h);
            }
            for m in &c.bytes {
                apply(&mut b, m, None);
            }
            if c.fix_crc && b.starts_with(b"\x89PNG") {
                fix_png_crcs(&mut b);
            }
            b
        },
    );
}

// ---------------------------------------------------------------- the corpus

/// The committed seed corpus: written by `NORMLAB_WRITE_CORPUS=1`, checked
/// otherwise (present, each file under 50 KB, and each one valid: the seeds
/// are good files, the mutations make them bad).
#[test]
fn corpus_seeds_are_small_and_valid() {
    if std::env::var_os("NORMLAB_WRITE_CORPUS").is_some() {
        write_corpus();
    }
    for kind in ["idx", "checkpoint", "image"] {
        let dir = corpus().join(kind);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let size = std::fs::metadata(&p).unwrap().len();
            assert!(size < 50_000, "{}: {size} bytes, seeds must stay under 50 KB", p.display());
            n += 1;
        }
        assert!(n >= 3, "{}: only {n} seeds", dir.display());
    }
    for b in corpus_seeds("idx", false) {
        assert!(idx::parse_images(&b, Path::new("seed")).is_ok() || idx::parse_labels(&b, Path::new("seed")).is_ok());
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, b) in corpus_seeds("checkpoint", true).iter().enumerate() {
        let p = dir.path().join(format!("{i}.safetensors"));
        std::fs::write(&p, b).unwrap();
        // normlab's checkpoints load; the foreign one is valid safetensors
        let normlab_made = SafeTensors::read_metadata(b).unwrap().1.metadata().is_some();
        assert_eq!(checkpoint::load(&p).is_ok(), normlab_made, "checkpoint seed {i}");
        assert!(SafeTensors::deserialize(b).is_ok());
    }
    for (i, b) in corpus_seeds("image", false).iter().enumerate() {
        let v = load_image_like_predict(b).unwrap_or_else(|e| panic!("image seed {i}: {e}"));
        assert_eq!(v.len(), 784);
    }
}

fn write_corpus() {
    let root = corpus();
    for kind in ["idx", "checkpoint", "image"] {
        std::fs::create_dir_all(root.join(kind)).unwrap();
    }
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    let put = |rel: &str, b: &[u8]| std::fs::write(root.join(rel), b).unwrap();
    let gz_best = |b: &[u8]| {
        // mtime 0, no name: the same bytes every time
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    // IDX: gzip as distributed, raw, and an odd shape
    put("idx/train-images-16.idx.gz", &gz_best(&idx::encode_images(&fm.train.images[..16 * 784], 16, 28, 28)));
    put("idx/train-labels-16.idx.gz", &gz_best(&idx::encode_labels(&fm.train.labels[..16])));
    put("idx/t10k-images-4.idx", &idx::encode_images(&fm.test.images[..4 * 784], 4, 28, 28));
    put("idx/t10k-labels-4.idx", &idx::encode_labels(&fm.test.labels[..4]));
    put("idx/images-3x7x5.idx", &idx::encode_images(&(0..105).map(|i| i as u8).collect::<Vec<_>>(), 3, 7, 5));
    put("idx/labels-empty.idx", &idx::encode_labels(&[]));
    // checkpoints: a full normlab header with weights set to zero (the
    // running variances to one) compresses to a few kilobytes
    for kind in [ModelKind::BnLenet, ModelKind::LnLenet, ModelKind::Lenet] {
        let mut net = models::build(kind, &mut rng::seeded(0)).unwrap();
        let bytes = checkpoint::to_bytes(&mut net, kind.name(), &kind.config(), &[("epoch", "1".into())]).unwrap();
        let (header, mut data) = split_safetensors(&bytes);
        data.iter_mut().for_each(|b| *b = 0);
        for (name, t) in header.as_object().unwrap() {
            if name.ends_with("running_var") {
                let o = &t["data_offsets"];
                let (a, z) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
                data[a..z].copy_from_slice(&f32_bytes(&vec![1.0; (z - a) / 4]));
            }
        }
        put(&format!("checkpoint/{}-zeros.safetensors.gz", kind.name()), &gz_best(&safetensors_raw(&header, &data)));
    }
    // a safetensors file normlab did not write: one tensor, no metadata
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let header = json!({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}});
    put("checkpoint/foreign.safetensors", &safetensors_raw(&header, &data));
    // images: real Fashion-MNIST images in the flavours predict must take
    let imgs = test_images(2);
    for (label, bytes, _) in png_variants(&imgs[0]) {
        if ["grey8", "grey16", "palette8-trns", "rgba8", "palette4"].contains(&label) {
            put(&format!("image/{label}.png"), &bytes);
        }
    }
    put("image/grey.jpg", &jpeg(&imgs[1], 28, 28, image::ExtendedColorType::L8));
    let rgb: Vec<u8> = imgs[1].iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
    put("image/rgb.jpg", &jpeg(&rgb, 28, 28, image::ExtendedColorType::Rgb8));
}

// A `zlib` round trip keeps the PNG helper honest.
#[test]
fn png_helper_writes_what_the_image_crate_reads() {
    let g: Vec<u8> = (0..28 * 28).map(|i| (i % 251) as u8).collect();
    let img =
        image::load_from_memory(&png(28, 28, 8, 0, &[], &rows(&g.iter().map(|&v| vec![v]).collect::<Vec<_>>(), 28)))
            .unwrap()
            .to_luma8();
    assert_eq!(img.as_raw(), &g);
    let mut back = Vec::new();
    ZlibDecoder::new(&zlib(b"abc")[..]).read_to_end(&mut back).unwrap();
    assert_eq!(back, b"abc");
}
