//! A full disk while `train` and `recompute-stats` save: a one-line error
//! (exit code 2) that names the file, says why and what to do, the old output kept, no
//! half-written model and no temporary file left.
//!
//! (normlab's `write_atomic` test does the same to the library's writer.)

use crate::common;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use normlab::fsutil::temp_path;

use common::checkpoints::trained;
use common::{normlab_with, s, subset, PreExec};

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
        // SAFETY: both arguments are NUL-terminated and outlive the call: buf
        // was zeroed, and the prefix (under 4,000 bytes) and the pid's digits
        // leave NULs after them; symlink is async-signal-safe (see above)
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
    r.user_error(&["precise.safetensors", "No space left on device", "free some space"]);
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
    r.fails_with(&["model.safetensors", "No space left on device", "free some space"]);
    assert!(!out.join("model.safetensors").exists(), "no half-written model");
    assert_eq!(temporaries_in(&out), Vec::<String>::new(), "no temporary file is left");
}
