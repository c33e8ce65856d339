//! The mutation-testing ("fuzzing") harness of the parsers of untrusted
//! files: random changes to real files (proptest strategies), and [`fuzz`],
//! which runs a parser on each mutated input and fails on a panic, a hang,
//! an allocation the input does not justify or an inconsistent `Ok`.
//!
//! Shared by normlab's `fuzz_idx` and normlab-cli's `fuzz_checkpoints`,
//! `fuzz_images` and `corpus` tests: both crates' test binaries
//! (`tests/it/main.rs`) declare it, and beside it `largest_alloc`
//! (`tests/support/largest_alloc.rs` at the workspace root), the allocator
//! that measures allocations.
//!
//! A few hundred cases per target by default; the long mode is
//!
//! ```text
//! NORMLAB_FUZZ_SECS=200 cargo test --release -p normlab -p normlab-cli fuzz_ -- --test-threads 1 --nocapture
//! ```
//!
//! (`NORMLAB_FUZZ_CASES=N` sets a number of cases instead,
//! `NORMLAB_FUZZ_SEED=N` another random sequence). Inputs that panic, run
//! too long or allocate too much are saved under
//! `target/tmp/normlab-fuzz-failures/`. The seeds in `tests/corpus/` are
//! read by [`corpus_seeds`].
#![allow(dead_code)] // each crate's test binary uses a different part

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::largest_alloc::largest_allocation;

/// The seed corpus, `tests/corpus/` at the workspace root.
pub fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// One random change to a file.
#[derive(Clone, Debug)]
pub enum Mutation {
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

pub fn extreme() -> impl Strategy<Value = u64> {
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

pub fn mutation() -> impl Strategy<Value = Mutation> {
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

pub fn at(i: &Index, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        i.index(len)
    }
}

/// Applies `m` to `bytes`, with positions drawn from the first `window`
/// bytes (the whole file when `window` is `None`).
pub fn apply(bytes: &mut Vec<u8>, m: &Mutation, window: Option<usize>) {
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

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(bytes).read_to_end(&mut out).expect("valid gzip");
    out
}

/// How much to run: `NORMLAB_FUZZ_CASES` cases (300 by default) or, with
/// `NORMLAB_FUZZ_SECS`, for that long.
pub fn budget() -> (u64, Option<Duration>, u64) {
    let var = |k: &str| std::env::var(k).ok().map(|v| v.parse::<u64>().unwrap_or_else(|e| panic!("{k}={v}: {e}")));
    let secs = var("NORMLAB_FUZZ_SECS").map(Duration::from_secs);
    let cases = var("NORMLAB_FUZZ_CASES").unwrap_or(if secs.is_some() { u64::MAX } else { 300 });
    (cases, secs, var("NORMLAB_FUZZ_SEED").unwrap_or(0))
}

pub enum Verdict {
    Ok,
    Err,
    /// The parser said Ok to something inconsistent.
    Wrong(String),
}

pub struct Target<'a> {
    pub name: &'a str,
    /// Slower than this is a failure (a hang in the making).
    pub time_bound: Duration,
    /// The largest allocation an input justifies.
    pub alloc_bound: &'a dyn Fn(&[u8]) -> usize,
    pub run: &'a dyn Fn(&[u8]) -> Verdict,
    /// A short description of a problem input, to tally problems by cause.
    pub describe: &'a dyn Fn(&[u8]) -> String,
}

pub fn failures_dir() -> PathBuf {
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
pub fn fuzz<C: Debug>(target: Target<'_>, strategy: impl Strategy<Value = C>, input: impl Fn(&C) -> Vec<u8>) {
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
pub fn corpus_seeds(kind: &str, expand_gz: bool) -> Vec<Vec<u8>> {
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
