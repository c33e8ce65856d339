//! Input from a hostile user, class by class (issue 15, items 3, 4, 6, 7):
//! stdout on a full device, paths that are not UTF-8, files that are not
//! regular or lie about their size (a FIFO, `/dev/zero`, a 4 GB sparse
//! file), downloads from a mirror that never stops or is killed midway,
//! the errors of everyday mistakes, and a fuzz of the whole option space.
//! Every refusal is exit code 2 with one line naming the culprit and the
//! fix; nothing panics, hangs or reads what it was told to.
//!
//! Damaged checkpoint values (negative variance, NaN, overflowing weights,
//! a corrupt optimizer state) are in `corrupt_checkpoints.rs`; a full disk
//! under the run's files in `full_disk.rs`.

use crate::common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use normlab_cli::download::{self, ExpectedFile, Hashed, IdxSet, TEMP_SUFFIX};
use normlab_cli::locate::{self, DataSource, SearchPaths};

use common::runs::{shared_dir, train, trained};
use common::{normlab, s, subset, BIN};

use crate::data_files;
use data_files::{files_in, gunzip, sha256_hex, write_tiny_set, NAMES};

/// Runs `cmd`, killing it after `limit`; `None` when it had to be killed.
fn run_for(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd.stdin(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run normlab");
    // stderr is read on a thread so that a chatty child never blocks on it
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap();
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    status.map(|status| Output { status, stdout, stderr })
}

/// What a finished run must look like whatever its input: exit 0, 1 or 2
/// (no panic, 101, and no signal), and on failure exactly one error line,
/// the last one on stderr (progress lines may come before it), with no
/// clap usage block.
fn assert_well_behaved(o: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    let ctx = format!("normlab {what}\nexit {:?}\nstderr:\n{stderr}", o.status);
    assert!(!stderr.contains("panicked"), "panic: {ctx}");
    let code = o.status.code().unwrap_or_else(|| panic!("killed by a signal: {ctx}"));
    assert!([0, 1, 2].contains(&code), "exit code {code}: {ctx}");
    if code != 0 {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let errors = lines.iter().filter(|l| l.starts_with("error:")).count();
        assert_eq!(errors, 1, "one error line: {ctx}");
        assert!(lines.last().is_some_and(|l| l.starts_with("error:")), "the error comes last: {ctx}");
        assert!(!stderr.contains("Usage:") && !stderr.contains("For more information"), "{ctx}");
    }
}

fn dev_full() -> Option<std::fs::File> {
    match std::fs::OpenOptions::new().write(true).open("/dev/full") {
        Ok(f) => Some(f),
        Err(e) => {
            eprintln!("skipped: /dev/full cannot be opened ({e})");
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Streams: stdout on a full device

#[test]
fn stdout_on_a_full_device_is_one_line_and_exit_1() {
    let Some(_) = dev_full() else { return };
    let t = trained();
    let sub = subset();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.png");
    common::runs::test_images(1)[0].0.save(&img).unwrap();
    let model = t.model();
    let cases: Vec<Vec<&str>> = vec![
        vec!["eval", "--checkpoint", s(&model), "--data-dir", s(&sub), "--limit", "64"],
        vec!["eval", "--checkpoint", s(&model), "--data-dir", s(&sub), "--limit", "64", "--json"],
        vec!["inspect", "--checkpoint", s(&model)],
        vec!["inspect", "--checkpoint", s(&model), "--json"],
        vec!["predict", "--checkpoint", s(&model), s(&img)],
        vec!["--help"],
        vec!["train", "--help"],
    ];
    for args in &cases {
        let o = run_for(Command::new(BIN).args(args).stdout(dev_full().unwrap()), common::HANG).expect("no hang");
        let what = args.join(" ");
        assert_well_behaved(&o, &what);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("stdout") && stderr.contains("No space left on device"), "{what}: {stderr}");
        eprintln!("[{what} > /dev/full] {}", stderr.trim_end());
    }

    // train --json: the epoch's files are written before its line, so the
    // run stops at its first line with every file of epoch 1 in place
    let out = dir.path().join("run");
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--limit-train", "128", "--limit-val", "64", "--epochs", "3", "--batch-size", "64", "--json"])
        .args(["--quiet", "--data-dir", s(&sub), "--out", s(&out)])
        .stdout(dev_full().unwrap());
    let o = run_for(&mut cmd, common::HANG).expect("no hang");
    assert_well_behaved(&o, "train --json > /dev/full");
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "the header and epoch 1: {metrics}");
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["epochs"].as_array().map(Vec::len), Some(1), "{run}");
    assert_eq!(run["result"], "in progress");
    // and the run continues where it stopped
    let o = Command::new(BIN)
        .args(["train", "--resume", s(&out), "--quiet", "--data-dir", s(&sub)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join("metrics.csv")).unwrap().lines().count(), 4);
}

// ---------------------------------------------------------------------------
// Paths that are not UTF-8

fn non_utf8(dir: &Path, name: &[u8]) -> PathBuf {
    let mut bytes = dir.as_os_str().as_bytes().to_vec();
    bytes.push(b'/');
    bytes.extend_from_slice(name);
    PathBuf::from(OsString::from_vec(bytes))
}

#[test]
fn paths_that_are_not_utf8_are_refused_or_work() {
    let dir = tempfile::tempdir().unwrap();
    let bad = non_utf8(dir.path(), b"caf\xe9");
    std::fs::create_dir(&bad).unwrap();
    let model = trained().model();
    let sub = subset();
    let m = model.as_os_str();
    let su = sub.as_os_str();
    let b = bad.as_os_str();
    let cases: Vec<(Vec<&OsStr>, &str)> = vec![
        (vec!["train".as_ref(), "--data-dir".as_ref(), b], "--data-dir"),
        (vec!["train".as_ref(), "--data-dir".as_ref(), su, "--out".as_ref(), b], "--out"),
        (vec!["train".as_ref(), "--resume".as_ref(), b], "--resume"),
        (vec!["eval".as_ref(), "--checkpoint".as_ref(), b, "--json".as_ref()], "--checkpoint"),
        (vec!["eval".as_ref(), "--checkpoint".as_ref(), m, "--data-dir".as_ref(), b, "--json".as_ref()], "--data-dir"),
        (vec!["predict".as_ref(), "--checkpoint".as_ref(), m, "--json".as_ref(), b], "IMAGE"),
        (vec!["predict".as_ref(), "--checkpoint".as_ref(), b, "x.png".as_ref()], "--checkpoint"),
        (vec!["inspect".as_ref(), "--checkpoint".as_ref(), b, "--json".as_ref()], "--checkpoint"),
        (vec!["recompute-stats".as_ref(), "--checkpoint".as_ref(), b, "--out".as_ref(), "o".as_ref()], "--checkpoint"),
        (vec!["recompute-stats".as_ref(), "--checkpoint".as_ref(), m, "--out".as_ref(), b, "--json".as_ref()], "--out"),
        (vec!["experiment".as_ref(), "bias".as_ref(), "--out".as_ref(), b], "--out"),
    ];
    for (args, option) in &cases {
        let r = normlab(args);
        r.user_error(&[option, "UTF-8"]);
    }
    // a non-UTF-8 directory reached through the environment works: run.json
    // records it as text, lossily
    write_tiny_set(&bad, 64, 32);
    let out = dir.path().join("run");
    let o = Command::new(BIN)
        .args(["train", "--epochs", "1", "--limit-val", "32", "--quiet", "--out", s(&out)])
        .env("NORMLAB_DATA", &bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(run.contains("caf\u{fffd}"), "{run}");
}

// ---------------------------------------------------------------------------
// Files that are not regular, or lie about their size

#[test]
fn checkpoints_that_are_not_files_of_their_size_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let model = trained().model();
    let run_dir = model.parent().unwrap().to_path_buf();
    let fifo = dir.path().join("fifo.safetensors");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo on a path that does not exist yet.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // 4 GB of nothing, and a good model padded to 4 GB: both sparse
    let zeros = dir.path().join("zeros.safetensors");
    std::fs::File::create(&zeros).unwrap().set_len(4 << 30).unwrap();
    let padded = dir.path().join("padded.safetensors");
    std::fs::copy(&model, &padded).unwrap();
    std::fs::OpenOptions::new().write(true).open(&padded).unwrap().set_len(4 << 30).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    let good = std::fs::read(&model).unwrap();
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    let missing = dir.path().join("missing.safetensors");
    let sub = subset();
    let img = dir.path().join("x.png");
    common::runs::test_images(1)[0].0.save(&img).unwrap();
    let out = dir.path().join("o.safetensors");
    let cases: [(&Path, &[&str]); 7] = [
        (&fifo, &["not a regular file"]),
        (Path::new("/dev/zero"), &["not a regular file"]),
        (&zeros, &["not a valid safetensors checkpoint"]),
        (&padded, &["4294967296 bytes", "header describes"]),
        (&truncated, &["header describes"]),
        (&run_dir, &["is a directory", "model.safetensors"]),
        (&missing, &["No such file", "check the path"]),
    ];
    for (ck, needles) in cases {
        for cmd in [
            vec!["eval", "--checkpoint", s(ck), "--data-dir", s(&sub)],
            vec!["inspect", "--checkpoint", s(ck)],
            vec!["predict", "--checkpoint", s(ck), s(&img)],
            vec!["recompute-stats", "--checkpoint", s(ck), "--out", s(&out), "--data-dir", s(&sub)],
        ] {
            let r = normlab(&cmd);
            let mut all = vec![s(ck)];
            all.extend(needles);
            r.user_error(&all);
            assert!(r.wall < Duration::from_secs(10), "{}", r.ctx());
            assert!(r.max_rss_kb < 200 << 10, "read more than it should: {}", r.ctx());
        }
    }
    assert!(!out.exists());
}

#[test]
fn data_files_that_are_not_regular_are_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("train-images-idx3-ubyte");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo on a path that does not exist yet.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let start = Instant::now();
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        let err = normlab::data::idx::read_images(path).expect_err("refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = normlab::data::idx::read_labels(path).expect_err("refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Everyday mistakes: one line, with the fix

#[test]
fn every_error_says_what_to_do_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let t = trained();
    let model = t.model();
    let img = dir.path().join("x.png");
    common::runs::test_images(1)[0].0.save(&img).unwrap();

    // images: a directory without images, stdin, a missing file, a device
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    normlab(&["predict", "--checkpoint", s(&model), s(&empty)])
        .user_error(&["is a directory without", "pass images or a folder of them"]);
    normlab(&["predict", "--checkpoint", s(&model), "-"]).user_error(&["stdin", "save the image to a file"]);
    normlab(&["predict", "--checkpoint", s(&model), s(&dir.path().join("no.png"))])
        .user_error(&["no.png", "check the path"]);
    normlab(&["predict", "--checkpoint", s(&model), "/dev/zero"]).user_error(&["/dev/zero", "not a regular file"]);

    // --data-dir: a file, a symbolic link loop
    let out = dir.path().join("never");
    normlab(&["train", "--data-dir", s(&img), "--out", s(&out)]).user_error(&["x.png", "is a file", "--data-dir"]);
    let (a, b) = (dir.path().join("loop-a"), dir.path().join("loop-b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    normlab(&["train", "--data-dir", s(&a), "--out", s(&out)]).user_error(&["loop-a", "symbolic link loop"]);

    // one training image: the limit is named, not the batch size
    let r = train(&out, &["--limit-train", "1", "--batch-size", "128"]);
    r.user_error(&["--limit-train 1", "--limit-train 2 or more"]);
    assert!(!r.stderr.contains("batch of 2"), "{}", r.ctx());

    // a weight decay that alone makes the weights grow is named as such
    let wd = train(&dir.path().join("wd"), &["--weight-decay", "1e300", "--quiet"]);
    assert_eq!(wd.code, 1, "{}", wd.ctx());
    assert!(wd.stderr.contains("--weight-decay 1e300 is too large"), "{}", wd.ctx());
    assert!(!wd.stderr.contains("smaller learning rate"), "{}", wd.ctx());
    assert_eq!(wd.stderr.lines().count(), 1, "{}", wd.ctx());

    // negative numbers and other bad values: the same friendly line for each
    for (option, value) in [("--epochs", "-1"), ("--lr", "-1"), ("--batch-size", "-5"), ("--seed", "-3")] {
        train(&out, &[option, value]).user_error(&[option]);
    }
    normlab(&["experiment", "lr", "--seeds", "18446744073709551615"]).user_error(&["--seeds", "maximum, 100"]);
    normlab(&["experiment", "lr", "--seeds", "4000000000"]).user_error(&["--seeds", "maximum, 100"]);
    normlab(&["--threads", "-2", "inspect", "--checkpoint", s(&model)]).user_error(&["--threads", "--threads 2"]);
    // clap's own errors: one line, with the tip and the command's --help
    normlab(&["train", "--outt", "x"]).user_error(&["'--outt'", "'--out'", "normlab train --help"]);
    normlab(&["eval"]).user_error(&["--checkpoint", "normlab eval --help"]);
    normlab(&["train", "--model"]).user_error(&["--model", "normlab train --help"]);
    normlab(&["tran"]).user_error(&["tran", "normlab --help"]);
    normlab(&[] as &[&str]).user_error(&["normlab --help"]);
    // while --help stays whole
    let help = normlab(&["train", "--help"]).ok();
    assert!(help.stdout.lines().count() > 20 && help.stdout.contains("Examples:"), "{}", help.stdout);

    // a training checkpoint loads as its model (with momentum it also holds
    // the optimizer's buffers): the same evaluation as model.safetensors
    let run = dir.path().join("momentum");
    train(&run, &["--momentum", "0.9", "--quiet"]).ok();
    let state = run.join("checkpoint.safetensors");
    assert!(common::runs::tensors(&state).0.iter().any(|(n, _)| n.starts_with("optim.")));
    let eval = |ck: &Path| {
        let mut v = common::runs::eval_json(ck, Some(64));
        v.as_object_mut().unwrap().remove("checkpoint");
        v
    };
    assert_eq!(eval(&state), eval(&run.join("model.safetensors")));
}

// ---------------------------------------------------------------------------
// Downloads: bounded, and cleaned up after a kill

/// A mirror on 127.0.0.1 whose every answer is 200 with `head` and then
/// zeros, `chunk` bytes every `pause`, for ever (until the client leaves).
/// Returns the base URL and the count of body bytes sent.
fn endless_mirror(head: String, chunk: usize, pause: Duration) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (head, counter) = (head.clone(), Arc::clone(&counter));
            std::thread::spawn(move || {
                let _ = stream_zeros(stream, &head, chunk, pause, &counter);
            });
        }
    });
    (url, sent)
}

fn stream_zeros(
    mut stream: TcpStream,
    head: &str,
    chunk: usize,
    pause: Duration,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    stream.write_all(head.as_bytes())?;
    let zeros = vec![0u8; chunk];
    loop {
        stream.write_all(&zeros)?;
        sent.fetch_add(chunk as u64, Ordering::Relaxed);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// The subset's training labels as the one file to download.
fn labels_file() -> (String, u64) {
    let content = gunzip(&std::fs::read(subset().join(NAMES[1])).unwrap());
    (sha256_hex(&content), content.len() as u64)
}

#[test]
fn an_endless_or_oversized_download_stops_at_the_expected_size() {
    let (sha, len) = labels_file();
    let expected = [ExpectedFile { name: NAMES[1], sha256: &sha, len, hashed: Hashed::Content }];
    let limit = download::max_download_len(&expected[0]);
    let dir = tempfile::tempdir().unwrap();
    // no Content-Length: the body ends when the connection does, never
    let (url, sent) = endless_mirror("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(), 64 << 10, Duration::ZERO);
    let start = Instant::now();
    let err = download::download_all_with(&url, dir.path(), false, &expected).expect_err("refused").to_string();
    assert!(err.contains("kept sending") && err.contains(&format!("{limit} bytes at most")), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    // what the server pushed before the client hung up: the limit, plus what
    // the sockets buffer
    std::thread::sleep(Duration::from_millis(200));
    assert!(sent.load(Ordering::Relaxed) < limit + (32 << 20), "read {} bytes", sent.load(Ordering::Relaxed));
    assert!(files_in(dir.path()).is_empty(), "left behind: {:?}", files_in(dir.path()));

    // a Content-Length of 10 GB is refused before the body is read
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n".to_string();
    let (url, _) = endless_mirror(head, 1024, Duration::from_millis(10));
    let start = Instant::now();
    let err = download::download_all_with(&url, dir.path(), false, &expected).expect_err("refused").to_string();
    assert!(err.contains("announces 10000000000 bytes") && err.contains("NORMLAB_MIRROR"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(files_in(dir.path()).is_empty(), "left behind: {:?}", files_in(dir.path()));
}

/// In the child process that `a_killed_download_leaves_nothing_after_the_next_start`
/// starts (this test binary running that same test, with the mirror and
/// directory in the environment): download slowly until killed.
fn child_downloading_slowly(url: &std::ffi::OsStr, dir: &std::ffi::OsStr) {
    let (sha, len) = labels_file();
    let expected = [ExpectedFile { name: NAMES[1], sha256: &sha, len, hashed: Hashed::Content }];
    let _ = download::download_all_with(url.to_str().unwrap(), Path::new(dir), false, &expected);
}

fn temporaries(dir: &Path) -> Vec<String> {
    files_in(dir).into_iter().filter(|n| n.ends_with(TEMP_SUFFIX)).collect()
}

#[test]
fn a_killed_download_leaves_nothing_after_the_next_start() {
    if let (Some(url), Some(dir)) = (std::env::var_os("HOSTILE_MIRROR"), std::env::var_os("HOSTILE_DIR")) {
        return child_downloading_slowly(&url, &dir);
    }
    let (sha, len) = labels_file();
    // a slow mirror: the download is under way when it is killed
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", len + 100);
    let (slow, _) = endless_mirror(head, 16, Duration::from_millis(50));
    let good = std::fs::read(subset().join(NAMES[1])).unwrap();
    let expected = [ExpectedFile { name: NAMES[1], sha256: &sha, len, hashed: Hashed::Content }];
    // this test's name for `--exact`: the test binary holds every file's
    // tests, each under its module's path (less the crate's name)
    let module = module_path!().split_once("::").expect("a module of the test binary").1;
    let this_test = format!("{module}::a_killed_download_leaves_nothing_after_the_next_start");
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", this_test.as_str(), "--nocapture"])
            .env("HOSTILE_MIRROR", &slow)
            .env("HOSTILE_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // a shell without job control starts background commands with SIGINT
        // ignored, and the child would inherit that: the test is about the
        // signal's default action, as a terminal's Ctrl-C delivers it
        // SAFETY: signal() is async-signal-safe, as pre_exec requires
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let start = Instant::now();
        while temporaries(dir.path()).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "the child never started its download");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert!(!status.success(), "signal {signal}: {status:?}");
        let left = temporaries(dir.path());
        // nothing can run on SIGKILL: the partial file is there
        if signal == libc::SIGKILL {
            assert_eq!(left.len(), 1, "{left:?}");
        }
        // the next search of the cache removes it, even when nothing is
        // downloaded (the data is found elsewhere) ...
        let paths = SearchPaths {
            env_dir: None,
            system_dir: subset(),
            cache_dir: Some(dir.path().to_path_buf()),
            mirror: "http://127.0.0.1:9/".into(),
        };
        let src = DataSource { set: IdxSet::FashionMnist, data_dir: None, allow_download: false, progress: false };
        assert_eq!(locate::locate_in(&src, &paths).unwrap(), subset());
        assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "signal {signal}: left {left:?}");
        // ... and so does the next download, which completes
        let mirror = common_mirror(NAMES[1], good.clone());
        std::fs::write(dir.path().join(format!(".{}.999999999.0{TEMP_SUFFIX}", NAMES[1])), b"partial").unwrap();
        download::download_all_with(&mirror, dir.path(), false, &expected).expect("the next download");
        assert_eq!(files_in(dir.path()), vec![NAMES[1].to_string()], "signal {signal}");
    }
}

/// A mirror that serves `body` as `name`.
fn common_mirror(name: &str, body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let routes: HashMap<String, Vec<u8>> = [(name.to_string(), body)].into();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
            let _ = match routes.get(path) {
                Some(b) => stream
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())
                            .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(b)),
                None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            };
        }
    });
    url
}

#[test]
fn only_the_temporaries_of_dead_downloads_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut alive = Command::new("sleep").arg("30").spawn().unwrap();
    let name = |pid: u32| format!(".{}.{pid}.0{TEMP_SUFFIX}", NAMES[0]);
    for pid in [dead_pid, alive.id()] {
        std::fs::write(dir.path().join(name(pid)), b"partial").unwrap();
    }
    std::fs::write(dir.path().join("notes.txt"), b"not ours").unwrap();
    download::remove_stale_temporaries(dir.path());
    let _ = alive.kill();
    let _ = alive.wait();
    assert_eq!(files_in(dir.path()), vec![name(alive.id()), "notes.txt".to_string()]);
}

// ---------------------------------------------------------------------------
// The option space, fuzzed

/// Every `--option` that `normlab SUB --help` lists.
fn options_of(sub: &str) -> Vec<String> {
    let o = Command::new(BIN).args([sub, "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    let mut names: Vec<String> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names.retain(|n| n != "--help");
    assert!(names.len() >= 2, "{sub} --help lists no options:\n{help}");
    names
}

/// xorshift64*: a fixed sequence, so that a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

#[test]
fn the_option_space_never_panics() {
    let base = shared_dir();
    let root = base.path();
    let data = root.join("tiny");
    std::fs::create_dir(&data).unwrap();
    write_tiny_set(&data, 24, 12);
    let fifo = root.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo on a new path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // a copy: a fuzzed recompute-stats may write its --out over its --checkpoint
    let model = root.join("model.safetensors");
    std::fs::copy(trained().model(), &model).unwrap();
    let subs = ["train", "eval", "predict", "inspect", "recompute-stats", "experiment", "bench"];
    let options: HashMap<&str, Vec<String>> = subs.iter().map(|s| (*s, options_of(s))).collect();
    let mut values: Vec<OsString> = [
        "0",
        "1",
        "2",
        "-1",
        "-0",
        "3",
        "1e300",
        "-1e300",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "",
        " ",
        "0.5",
        "abc",
        "18446744073709551615",
        "18446744073709551616",
        "4000000000",
        "-9223372036854775808",
        "1e-300",
        "0x10",
        "bn-lenet",
        "lenet",
        "ln-lenet",
        "net.1",
        "all",
        "lr",
        "bias",
        "/dev/full",
        "/dev/zero",
        "/dev/null",
        "-",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    values.push(OsString::from_vec(b"\xff\xfe".to_vec()));
    values.push(fifo.clone().into_os_string());
    values.push(data.clone().into_os_string());
    values.push(model.clone().into_os_string());
    values.push(root.join("out").into_os_string());
    values.push(root.into());
    // where a file may be written: never a device (as root, an atomic
    // write renames a regular file over /dev/null)
    let outs: Vec<OsString> = vec![
        root.join("out").into(),
        root.join("o.safetensors").into(),
        model.clone().into(),
        "".into(),
        OsString::from_vec(b"\xff".to_vec()),
        "-".into(),
    ];
    let flags = ["--json", "--quiet", "--quick", "--recompute-stats", "--invert", "--no-epoch", "--suite"];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut finished, mut killed) = (0, 0);
    let mut codes: HashMap<i32, usize> = HashMap::new();
    let start = Instant::now();
    // about a minute: most vectors are refused at once, the rest run on 24 images
    while start.elapsed() < Duration::from_secs(60) && finished + killed < 400 {
        let sub = *rng.pick(&subs);
        let mut args: Vec<OsString> = vec![sub.into()];
        if rng.below(4) == 0 {
            args.insert(0, "--threads".into());
            args.insert(1, rng.pick(&values).clone());
        }
        // one vector in five takes the command's defaults (and perhaps one
        // flag): with train's many options, random values alone seldom make
        // a run that goes through, and the vectors must reach the commands
        let plain = rng.below(5) == 0;
        let own_flags: Vec<&str> = flags.iter().copied().filter(|f| options[sub].iter().any(|o| o == f)).collect();
        if plain && !own_flags.is_empty() && rng.below(2) == 0 {
            args.push(rng.pick(&own_flags).to_string().into());
        }
        for _ in 0..if plain { 0 } else { 1 + rng.below(4) } {
            let opt = rng.pick(&options[sub]).clone();
            args.push(opt.clone().into());
            if opt == "--out" || opt == "--resume" {
                args.push(rng.pick(&outs).clone());
            } else if !flags.contains(&opt.as_str()) || rng.below(8) == 0 {
                args.push(rng.pick(&values).clone());
            }
        }
        if rng.below(3) == 0 {
            args.push(rng.pick(&values).clone()); // a positional: NAME, IMAGE
        }
        let what = args.iter().map(|a| format!("{:?}", a)).collect::<Vec<_>>().join(" ");
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .current_dir(root)
            .env("NORMLAB_DATA", &data)
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env("NORMLAB_MIRROR", "http://127.0.0.1:9/")
            .stdout(Stdio::null());
        match run_for(&mut cmd, Duration::from_secs(8)) {
            // a long run that was asked for (many epochs, a benchmark): not a failure
            None => killed += 1,
            Some(o) => {
                assert_well_behaved(&o, &what);
                *codes.entry(o.status.code().unwrap_or(-1)).or_default() += 1;
                finished += 1;
            }
        }
    }
    eprintln!("fuzzed {finished} argument vectors to the end (exit codes {codes:?}), stopped {killed} long runs");
    assert!(finished >= 50, "too few vectors ran to the end: {finished} (and {killed} stopped)");
    // the vectors reach the commands, not only the parser
    assert!(codes.get(&0).is_some_and(|&n| n >= 5), "too few runs succeed: {codes:?}");
}
