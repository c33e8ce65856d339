//! Runs as a hostile user makes them (issue 15, items 1, 2, 5 and 8):
//! output directories that hold other runs, processes racing for one
//! directory, runs started in the same second, SIGKILL at arbitrary
//! points, resumes with options or data that contradict the run, and
//! `recompute-stats` asked to overwrite what it reads.
//!
//! Every run here uses the committed 2,000-image subset with a few hundred
//! images and one to three epochs.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use common::checkpoints::{safetensors_raw, split_safetensors};
use common::runs::{subset_copy, train};
use common::{normlab, s, subset, Out, BIN};

const LOCK: &str = ".normlab.lock";

/// Every file of `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(name, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn run_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

/// metrics.csv without the two timing columns.
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.split(',').take(5).collect::<Vec<_>>().join(","))
        .collect()
}

/// A finished run: run.json holds the summary of `epochs` epochs, no lock
/// and no temporary file remain.
fn assert_finished(dir: &Path, epochs: u64) {
    let doc = run_json(dir);
    assert_eq!(doc["result"]["summary"], true, "{doc}");
    assert_eq!(doc["result"]["epochs"], epochs, "{doc}");
    assert_eq!(metrics(dir).len() as u64, epochs + 1);
    for n in names(dir) {
        assert!(n != LOCK && !n.contains(".tmp-"), "{n} left in {}", dir.display());
    }
}

/// The small recipe of most runs here: 256 images, one epoch.
const ONE_EPOCH: [&str; 5] = ["--quiet", "--limit-train", "256", "--epochs", "1"];

/// A finished one-epoch run in `dir`.
fn one_epoch_run(dir: &Path) {
    train(dir, &ONE_EPOCH).ok();
    assert_finished(dir, 1);
}

/// A temporary directory with a finished one-epoch run in its `run/`.
fn tmp_with_run() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    one_epoch_run(&dir);
    (tmp, dir)
}

/// `normlab ARGS` started in `cwd` with the subset; not waited for.
fn spawn(args: &[&str], cwd: &Path, stdout: Stdio) -> Child {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("NORMLAB_DATA")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("run normlab")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

// ------------------------------------------------ 1. a directory, one run

#[test]
fn out_onto_another_run_is_refused_and_force_replaces_it_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    train(&dir, &["--seed", "1", "--quiet", "--limit-train", "256"]).ok();
    // something a user saved beside the run (the README's recompute-stats example)
    std::fs::write(dir.join("model-precise-bn.safetensors"), b"saved by hand").unwrap();
    let before = snapshot(&dir);

    let r = train(&dir, &["--seed", "2", "--quiet", "--limit-train", "256"]);
    r.user_error(&[s(&dir), "--resume", "--force"]);
    assert_eq!(snapshot(&dir), before, "a refused run changes nothing");

    // --force with a run that fails before its first epoch ends: the old run stays as it was
    train(&dir, &["--force", "--quiet", "--limit-train", "1", "--batch-size", "2"]).user_error(&[]);
    let r = train(&dir, &["--force", "--quiet", "--limit-train", "256", "--lr", "1e30"]);
    assert_eq!(r.code, 1, "divergence: {}", r.ctx());
    assert_eq!(snapshot(&dir), before, "a replacement that never got going leaves the old run whole");

    // --force replaces it whole: nothing of the old run is left beside the new one
    train(&dir, &["--force", "--seed", "2", "--epochs", "1", "--quiet", "--limit-train", "256"]).ok();
    assert_eq!(names(&dir), common::runs::RUN_OUTPUTS);
    assert_eq!(run_json(&dir)["options"]["seed"], 2);
    assert_finished(&dir, 1);
}

#[test]
fn a_directory_of_other_files_is_refused_even_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("thesis");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("chapter1.tex"), b"\\section{Batch norm}").unwrap();
    let before = snapshot(&dir);
    for extra in [&["--quiet"][..], &["--quiet", "--force"]] {
        train(&dir, extra).user_error(&[s(&dir), "not empty", "--force"]);
        assert_eq!(snapshot(&dir), before);
    }
    // --force needs --out
    let r = normlab(&["train", "--force", "--data-dir", s(&subset())]);
    assert_eq!(r.code, 2, "{}", r.ctx());
    // an empty directory made beforehand is fine, and stays after a failed run
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    train(&empty, &["--quiet", "--limit-train", "1", "--batch-size", "2"]).user_error(&[]);
    assert!(empty.is_dir() && names(&empty).is_empty(), "{:?}", names(&empty));
    one_epoch_run(&empty);
}

/// `YYYYMMDD-HHMMSS` of `secs` after the epoch, in UTC, as `date` writes it.
fn stamp(secs: u64) -> String {
    let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y%m%d-%H%M%S"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn runs_started_in_the_same_second_get_directories_of_their_own() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    // the plain names of the next seconds are taken already: every run must
    // step around them, and around each other
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let runs = tmp.path().join("runs");
    for t in now.saturating_sub(1)..now + 30 {
        let taken = runs.join(format!("lenet-{}", stamp(t)));
        std::fs::create_dir_all(&taken).unwrap();
        std::fs::write(taken.join("notes.txt"), t.to_string()).unwrap();
    }
    let before = snapshot(&runs);
    let args = ["train", "--model", "lenet", "--limit-train", "128", "--limit-val", "64", "--epochs", "1", "--quiet"];
    let children: Vec<Child> = (0..3)
        .map(|_| {
            let mut a = args.to_vec();
            a.extend(["--data-dir", s(&sub)]);
            spawn(&a, tmp.path(), Stdio::null())
        })
        .collect();
    for c in children {
        let (code, stderr) = finish(c);
        assert_eq!(code, 0, "{stderr}");
    }
    let new: Vec<String> =
        names(&runs).into_iter().filter(|n| !before.contains_key(&format!("{n}/notes.txt"))).collect();
    assert_eq!(new.len(), 3, "three runs, three directories: {new:?}");
    for n in &new {
        assert!(n.starts_with("lenet-") && n.rsplit_once('-').is_some_and(|(_, k)| k.parse::<u32>().is_ok()));
        assert_finished(&runs.join(n), 1);
    }
    let still: BTreeMap<_, _> = snapshot(&runs).into_iter().filter(|(k, _)| k.ends_with("notes.txt")).collect();
    assert_eq!(still, before, "the directories that were there are untouched");
}

#[test]
fn a_second_process_on_the_same_directory_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    let dir = tmp.path().join("run");
    let mut long =
        vec!["train", "--limit-train", "2000", "--epochs", "4", "--batch-size", "8", "--quiet", "--seed", "11"];
    long.extend(["--data-dir", s(&sub), "--out", s(&dir)]);
    let holder = spawn(&long, tmp.path(), Stdio::null());
    let pid = holder.id().to_string();
    let start = Instant::now();
    while std::fs::read_to_string(dir.join(LOCK)).map_or(true, |t| t.trim() != pid) {
        assert!(start.elapsed() < Duration::from_secs(30), "no lock after 30 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    train(&dir, &["--quiet", "--seed", "12"]).user_error(&[s(&dir), "in use", &pid]);
    normlab(&["train", "--resume", s(&dir), "--quiet"]).user_error(&[s(&dir), "in use", &pid]);
    let (code, stderr) = finish(holder);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(run_json(&dir)["options"]["seed"], 11, "the files are the holder's alone");
    assert_finished(&dir, 4);

    // two processes started together on a fresh directory: one runs, the other is refused
    for round in 0..3 {
        let dir = tmp.path().join(format!("race-{round}"));
        let children: Vec<(u64, Child)> = [21u64, 22]
            .into_iter()
            .map(|seed| {
                let seed_s = seed.to_string();
                let mut a = vec!["train", "--limit-train", "256", "--limit-val", "64", "--epochs", "1", "--quiet"];
                a.extend(["--seed", &seed_s, "--data-dir", s(&sub), "--out", s(&dir)]);
                (seed, spawn(&a, tmp.path(), Stdio::null()))
            })
            .collect();
        let results: Vec<(u64, i32, String)> =
            children.into_iter().map(|(seed, c)| (seed, finish(c))).map(|(seed, (c, e))| (seed, c, e)).collect();
        let winners: Vec<u64> = results.iter().filter(|r| r.1 == 0).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "exactly one run owns {}: {results:?}", dir.display());
        let loser = results.iter().find(|r| r.1 != 0).unwrap();
        assert_eq!(loser.1, 2, "{results:?}");
        assert!(loser.2.contains("in use") || loser.2.contains("already holds another run"), "{}", loser.2);
        assert_eq!(loser.2.trim_end().lines().count(), 1, "{}", loser.2);
        assert_eq!(run_json(&dir)["options"]["seed"], winners[0]);
        assert_finished(&dir, 1);
    }
}

/// The pid of a process that has ended.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

#[test]
fn the_lock_and_temporary_files_of_a_dead_process_are_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    let dead = dead_pid();
    std::fs::write(dir.join(LOCK), format!("{dead}\n")).unwrap();
    for t in [format!(".model.safetensors.tmp-{dead}"), format!(".checkpoint.safetensors.tmp-{dead}")] {
        std::fs::write(dir.join(t), b"half a file").unwrap();
    }
    one_epoch_run(&dir);
}

#[test]
fn a_run_that_fails_before_its_first_epoch_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    let missing = tmp.path().join("no-data");
    let few = few_images(tmp.path(), 50);
    let cases: [(&[&str], i32); 5] = [
        (&["--data-dir", s(&missing)], 2),
        (&["--data-dir", s(&sub), "--limit-train", "1", "--batch-size", "2"], 2),
        // diverges at batch 2 of the first epoch, and at its end
        (&["--data-dir", s(&sub), "--limit-train", "256", "--batch-size", "32", "--lr", "3e38"], 1),
        (&["--data-dir", s(&sub), "--limit-train", "256", "--batch-size", "32", "--lr", "1e30"], 1),
        // too few images to recompute the statistics: found once the data is read
        (&["--data-dir", s(&few), "--recompute-stats"], 2),
    ];
    for (i, (extra, code)) in cases.iter().enumerate() {
        // with --out (and parents to create), and with the default name in a fresh directory
        let out = tmp.path().join(format!("a{i}/b/run"));
        let mut args = vec!["train", "--epochs", "1", "--quiet", "--out", s(&out)];
        args.extend(*extra);
        let r = normlab(&args);
        assert_eq!(r.code, *code, "{}", r.ctx());
        assert!(!tmp.path().join(format!("a{i}")).exists(), "{} left behind: {}", out.display(), r.ctx());

        let cwd = tmp.path().join(format!("cwd{i}"));
        std::fs::create_dir(&cwd).unwrap();
        let mut args = vec!["train", "--epochs", "1", "--quiet"];
        args.extend(*extra);
        let (c, stderr) = finish(spawn(&args, &cwd, Stdio::null()));
        assert_eq!(c, *code, "{stderr}");
        assert!(names(&cwd).is_empty(), "{:?} left behind: {stderr}", names(&cwd));
    }
}

#[test]
fn an_experiment_onto_another_is_refused_and_force_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    let out = tmp.path().join("exp");
    let args = |name: &'static str| {
        vec!["experiment", name, "--quick", "--seeds", "1", "--epochs", "1", "--limit-train", "256", "--quiet"]
    };
    let mut a = args("bias");
    a.extend(["--data-dir", s(&sub), "--out", s(&out)]);
    normlab(&a).ok();
    let before = snapshot(&out);
    let mut b = args("frozen-affine");
    b.extend(["--data-dir", s(&sub), "--out", s(&out)]);
    normlab(&b).user_error(&[s(&out), "--force"]);
    assert_eq!(snapshot(&out), before);
    // --force replaces it, with its readings printed to a reader that has gone
    b.retain(|a| *a != "--quiet");
    b.push("--force");
    let mut child = spawn(&b, tmp.path(), Stdio::piped());
    drop(child.stdout.take());
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Learnable or frozen gamma and beta"), "the frozen-affine report: {report}");
    let after = snapshot(&out);
    for (name, bytes) in &before {
        assert!(after.get(name) != Some(bytes), "{name} of the replaced experiment is still there");
    }
    assert!(!out.join(LOCK).exists());
}

// ------------------------------------------------------ 2. honest resumes

/// A finished run of 2 epochs with non-default options everywhere.
fn recorded_run(dir: &Path, data: &Path) -> Out {
    let args = [
        "train",
        "--model",
        "bn-lenet",
        "--limit-train",
        "384",
        "--limit-val",
        "128",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.2",
        "--momentum",
        "0.5",
        "--weight-decay",
        "0.0001",
        "--seed",
        "5",
        "--quiet",
        "--data-dir",
        s(data),
        "--out",
        s(dir),
    ];
    normlab(&args).ok()
}

#[test]
fn resume_refuses_every_option_that_contradicts_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    recorded_run(&dir, &subset());
    let before = snapshot(&dir);
    let d = s(&dir);
    for (opt, value) in [
        ("--model", "lenet"),
        ("--batch-size", "64"),
        ("--lr", "0.3"),
        ("--momentum", "0"),
        ("--weight-decay", "0"),
        ("--seed", "6"),
        ("--limit-train", "256"),
        ("--limit-val", "64"),
    ] {
        normlab(&["train", "--resume", d, "--epochs", "3", opt, value]).user_error(&[opt, value, d]);
        assert_eq!(snapshot(&dir), before, "{opt} {value}");
    }
    normlab(&["train", "--resume", d, "--epochs", "3", "--recompute-stats"]).user_error(&["--recompute-stats"]);
    // several at once: one line naming each
    normlab(&["train", "--resume", d, "--lr", "1", "--seed", "0"]).user_error(&["--lr 1", "--seed 0", "--lr 0.2"]);
    // fewer epochs than done
    normlab(&["train", "--resume", d, "--epochs", "1"]).user_error(&["--epochs", "2"]);
    assert_eq!(snapshot(&dir), before);

    // a finished run: said so, exit 0, nothing changed, even with the recorded options repeated
    let same = ["--lr", "0.2", "--momentum", "0.5", "--seed", "5", "--batch-size", "32", "--limit-train", "384"];
    let mut args = vec!["train", "--resume", d];
    args.extend(same);
    let r = normlab(&args).ok();
    assert!(r.stdout.is_empty() && r.stderr.contains("finished"), "{}", r.ctx());
    let r = normlab(&["train", "--resume", d, "--epochs", "2", "--quiet"]).ok();
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{}", r.ctx());
    assert_eq!(snapshot(&dir), before, "resuming a finished run changes nothing");

    // raising --epochs is the one change allowed, with equal options beside it
    args.extend(["--epochs", "3", "--quiet"]);
    normlab(&args).ok();
    assert_finished(&dir, 3);
    let o = &run_json(&dir)["options"];
    assert_eq!((o["epochs"].as_u64(), o["seed"].as_u64(), o["batch_size"].as_u64()), (Some(3), Some(5), Some(32)));
}

/// The subset with one training label changed, stored uncompressed.
fn altered_copy(dir: &Path) -> PathBuf {
    let copy = subset_copy(dir);
    let mut labels = Vec::new();
    let gz = std::fs::File::open(copy.join("train-labels-idx1-ubyte.gz")).unwrap();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut labels).unwrap();
    labels[8] = (labels[8] + 1) % 10;
    std::fs::remove_file(copy.join("train-labels-idx1-ubyte.gz")).unwrap();
    std::fs::write(copy.join("train-labels-idx1-ubyte"), labels).unwrap();
    copy
}

#[test]
fn resume_uses_the_recorded_data_and_refuses_other_data() {
    let tmp = tempfile::tempdir().unwrap();
    let own = tmp.path().join("own");
    let data = subset_copy(&own);
    // the reference: 3 epochs without a break
    let whole = tmp.path().join("whole");
    let mut args = vec!["train", "--limit-train", "384", "--limit-val", "128", "--epochs", "3", "--quiet"];
    args.extend(["--data-dir", s(&data), "--out", s(&whole)]);
    normlab(&args).ok();
    // the same run in two parts; the resume names no data: the recorded subset, not a search
    let cut = tmp.path().join("cut");
    let mut first = vec!["train", "--limit-train", "384", "--limit-val", "128", "--epochs", "1", "--quiet"];
    first.extend(["--data-dir", s(&data), "--out", s(&cut)]);
    normlab(&first).ok();
    let before = snapshot(&cut);

    let other = altered_copy(&tmp.path().join("other"));
    normlab(&["train", "--resume", s(&cut), "--epochs", "3", "--data-dir", s(&other)]).user_error(&[
        "--data-dir",
        s(&other),
        "other data",
    ]);
    // the recorded directory moved away
    let recorded = std::fs::canonicalize(&data).unwrap();
    let moved = tmp.path().join("moved");
    std::fs::rename(&own, &moved).unwrap();
    normlab(&["train", "--resume", s(&cut), "--epochs", "3"]).user_error(&[s(&recorded), "--data-dir"]);
    // its files changed in place
    std::fs::rename(other.parent().unwrap(), &own).unwrap();
    normlab(&["train", "--resume", s(&cut), "--epochs", "3"]).user_error(&[s(&recorded), "changed"]);
    assert_eq!(snapshot(&cut), before, "refused resumes change nothing");
    std::fs::remove_dir_all(&own).unwrap();
    std::fs::rename(&moved, &own).unwrap();

    normlab(&["train", "--resume", s(&cut), "--epochs", "3", "--quiet"]).ok();
    assert_eq!(metrics(&cut), metrics(&whole));
    assert_eq!(
        std::fs::read(cut.join("model.safetensors")).unwrap(),
        std::fs::read(whole.join("model.safetensors")).unwrap()
    );
    // a copy of the same data elsewhere is the same data
    let copy = subset_copy(&tmp.path().join("copy"));
    normlab(&["train", "--resume", s(&cut), "--epochs", "4", "--quiet", "--data-dir", s(&copy)]).ok();
    assert_finished(&cut, 4);
}

#[test]
fn a_checkpoint_without_the_record_still_resumes() {
    let (tmp, dir) = tmp_with_run();
    // the checkpoint as normlab wrote it before it kept a record
    let state = dir.join("checkpoint.safetensors");
    let (mut header, data) = split_safetensors(&std::fs::read(&state).unwrap());
    assert!(header["__metadata__"].as_object_mut().unwrap().remove("normlab.run_record").is_some());
    std::fs::write(&state, safetensors_raw(&header, &data)).unwrap();
    // no --data-dir: the directory run.json names, with a warning
    let r = normlab(&["train", "--resume", s(&dir), "--epochs", "2"]).ok();
    assert!(r.stderr.contains("warning") && r.stderr.contains("cannot be checked"), "{}", r.ctx());
    assert_finished(&dir, 2);
    // the resumed run has a record now: other data is refused
    let other = altered_copy(&tmp.path().join("other"));
    normlab(&["train", "--resume", s(&dir), "--epochs", "3", "--data-dir", s(&other)]).user_error(&["--data-dir"]);
}

#[test]
fn a_run_killed_during_recompute_stats_recomputes_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let with = tmp.path().join("with");
    let without = tmp.path().join("without");
    one_epoch_run(&without);
    let mut r = ONE_EPOCH.to_vec();
    r.push("--recompute-stats");
    train(&with, &r).ok();
    // the run killed after its last epoch, while recomputing: its model is
    // still the trained one, run.json still says "in progress", no plots
    let killed = tmp.path().join("killed");
    std::fs::create_dir(&killed).unwrap();
    for f in ["checkpoint.safetensors", "metrics.csv"] {
        std::fs::copy(with.join(f), killed.join(f)).unwrap();
    }
    std::fs::copy(without.join("model.safetensors"), killed.join("model.safetensors")).unwrap();
    let mut doc = run_json(&with);
    doc["result"] = "in progress".into();
    std::fs::write(killed.join("run.json"), doc.to_string()).unwrap();

    normlab(&["train", "--resume", s(&killed), "--quiet"]).ok();
    assert_eq!(
        std::fs::read(killed.join("model.safetensors")).unwrap(),
        std::fs::read(with.join("model.safetensors")).unwrap(),
        "the statistics were recomputed"
    );
    assert!(run_json(&killed)["result"]["recompute_stats"].is_object());
    assert_finished(&killed, 1);
}

#[test]
fn sigkill_at_arbitrary_points_then_resume_gives_the_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    let recipe = [
        "train",
        "--limit-train",
        "512",
        "--limit-val",
        "128",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--momentum",
        "0.9",
        "--recompute-stats",
        "--quiet",
    ];
    let whole = tmp.path().join("whole");
    let mut args = recipe.to_vec();
    args.extend(["--data-dir", s(&sub), "--out", s(&whole)]);
    let t0 = Instant::now();
    normlab(&args).ok();
    let wall = t0.elapsed();
    // points spread over the whole run and a little past it, in an order
    // fixed by a small linear congruential generator
    let mut x: u64 = 0x2545_f491;
    for k in 0..8 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let at = wall.mul_f64((x >> 11) as f64 / (1u64 << 53) as f64 * 1.1);
        let dir = tmp.path().join(format!("cut-{k}"));
        let mut args = recipe.to_vec();
        args.extend(["--data-dir", s(&sub), "--out", s(&dir)]);
        let mut child = spawn(&args, tmp.path(), Stdio::null());
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL
        finish(child);
        if dir.join("checkpoint.safetensors").exists() {
            let r = normlab(&["train", "--resume", s(&dir), "--quiet"]).ok();
            assert!(r.stderr.is_empty(), "{}", r.ctx());
        } else {
            // killed before its first epoch was saved: a lock and temporary files at most, and the same --out starts afresh
            if dir.exists() {
                for n in names(&dir) {
                    assert!(n == LOCK || n.contains(".tmp-"), "{n} in {} (killed after {at:?})", dir.display());
                }
            }
            normlab(&args).ok();
        }
        assert_finished(&dir, 3);
        assert_eq!(metrics(&dir), metrics(&whole), "killed after {at:?}");
        assert_eq!(
            std::fs::read(dir.join("model.safetensors")).unwrap(),
            std::fs::read(whole.join("model.safetensors")).unwrap(),
            "killed after {at:?}"
        );
    }
}

// ---------------------------------------------- 5. recompute-stats never destroys

/// A data directory with the first `n` training images of the subset (its test images whole).
fn few_images(dir: &Path, n: usize) -> PathBuf {
    let fm = normlab::data::load_dir(&subset()).unwrap();
    let d = dir.join(format!("few-{n}"));
    std::fs::create_dir_all(&d).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for v in [n as u32, 28, 28] {
        images.extend(v.to_be_bytes());
    }
    images.extend(&fm.train.images[..n * 784]);
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend(&fm.train.labels[..n]);
    std::fs::write(d.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), labels).unwrap();
    for f in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"] {
        std::fs::copy(subset().join(f), d.join(f)).unwrap();
    }
    d
}

#[test]
fn recompute_stats_refuses_what_would_destroy_before_any_work() {
    let (tmp, run) = tmp_with_run();
    let model = run.join("model.safetensors");
    let before = snapshot(&run);
    // a data directory that does not exist: a refusal that names --out came before any work
    let nowhere = tmp.path().join("no-data");
    let recompute = |out: &Path| {
        normlab(&["recompute-stats", "--checkpoint", s(&model), "--out", s(out), "--data-dir", s(&nowhere)])
    };

    recompute(&model).user_error(&["--out", "--checkpoint"]);
    recompute(&run.join(".").join("model.safetensors")).user_error(&["--out", "--checkpoint"]);
    let link = tmp.path().join("link.safetensors");
    std::os::unix::fs::symlink(&model, &link).unwrap();
    recompute(&link).user_error(&["--out", "--checkpoint"]);
    let hard = tmp.path().join("hard.safetensors");
    std::fs::hard_link(&model, &hard).unwrap();
    recompute(&hard).user_error(&["--out", "--checkpoint"]);
    for owned in ["checkpoint.safetensors", "run.json", "metrics.csv", "curves.png"] {
        recompute(&run.join(owned)).user_error(&["--out", owned, "run"]);
    }
    recompute(&run).user_error(&["--out", "directory"]);
    recompute(&tmp.path().join("no-dir/x.safetensors")).user_error(&["--out", "does not exist"]);
    // not writable, even for root
    recompute(Path::new("/proc/normlab-precise.safetensors")).user_error(&["--out", "cannot be written"]);
    assert_eq!(snapshot(&run), before, "nothing of the run changed");
    // the run still resumes (it is finished: nothing to do)
    normlab(&["train", "--resume", s(&run), "--quiet"]).ok();

    // models without batch norm: nothing to recompute
    for m in ["lenet", "ln-lenet"] {
        let dir = tmp.path().join(m);
        train(&dir, &["--quiet", "--model", m, "--limit-train", "64", "--epochs", "1"]).ok();
        let out = tmp.path().join(format!("{m}-precise.safetensors"));
        let ck = dir.join("model.safetensors");
        normlab(&["recompute-stats", "--checkpoint", s(&ck), "--out", s(&out), "--data-dir", s(&nowhere)])
            .user_error(&[m, "no batch-norm layers"]);
        assert!(!out.exists());
    }
    // too few training images to estimate statistics (1 gave 0/1 statistics, "success")
    let precise = tmp.path().join("precise.safetensors");
    for n in [1, 99] {
        let few = few_images(tmp.path(), n);
        normlab(&["recompute-stats", "--checkpoint", s(&model), "--out", s(&precise), "--data-dir", s(&few)])
            .user_error(&[&format!("holds {n} training images"), "at least 100"]);
        assert!(!precise.exists());
        // and train --recompute-stats says so before training
        let out = tmp.path().join(format!("few-run-{n}"));
        let r = normlab(&["train", "--recompute-stats", "--data-dir", s(&few), "--out", s(&out), "--quiet"]);
        r.user_error(&["at least 100"]);
        assert!(!out.exists());
    }
    let few = few_images(tmp.path(), 100);
    normlab(&["recompute-stats", "--checkpoint", s(&model), "--out", s(&precise), "--data-dir", s(&few)]).ok();
    assert!(precise.is_file());
}

// ------------------------------------------------------ 8. a closed stdout

#[test]
fn a_closed_stdout_does_not_stop_training() {
    let tmp = tempfile::tempdir().unwrap();
    let sub = subset();
    // `normlab train --json | head -1`: the reader leaves after the first epoch's line
    let dir = tmp.path().join("head");
    let mut args = vec!["train", "--limit-train", "512", "--limit-val", "128", "--epochs", "3", "--json"];
    args.extend(["--data-dir", s(&sub), "--out", s(&dir)]);
    let mut child = spawn(&args, tmp.path(), Stdio::piped());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // (the reader is dropped here: the pipe is closed)
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(first.contains("\"epoch\":1"), "{first}");
    assert_finished(&dir, 3);

    // closed before anything is written, with the closing line for people at the end
    let dir = tmp.path().join("closed");
    let mut args = vec!["train", "--limit-train", "256", "--limit-val", "64", "--epochs", "2"];
    args.extend(["--data-dir", s(&sub), "--out", s(&dir)]);
    let mut child = spawn(&args, tmp.path(), Stdio::piped());
    drop(child.stdout.take());
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_finished(&dir, 2);
}
