//! `fsutil::write_atomic` on a full disk: the write fails with an error
//! that names the file and says why, the old file is kept and no temporary
//! file is left.
//!
//! `/dev/full` accepts `open` and fails every `write` with ENOSPC. A symbolic
//! link to it, named like the temporary file `write_atomic` writes beside its
//! target, makes that write fail as on a full disk. (normlab-cli's
//! `full_disk` tests do the same to `train` and `recompute-stats`.)

use std::path::Path;

use normlab::fsutil::{temp_path, write_atomic};

fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

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

/// A rename replaces whatever the target's name points at: run as root,
/// `recompute-stats --out /dev/null` once put a regular file in place of the
/// device. Only regular files are replaced; a FIFO (a stand-in for a device
/// that a test may break safely) and a directory are refused and stay.
#[test]
fn write_atomic_replaces_only_regular_files() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped the FIFO case: mkfifo failed here");
    } else {
        let msg = write_atomic(&fifo, b"x").expect_err("a FIFO is not replaced").to_string();
        assert!(msg.contains("not a regular file") && msg.contains(s(&fifo)), "{msg}");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo(), "the FIFO is still there");
        // through a symbolic link too
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(write_atomic(&link, b"x").is_err());
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let msg = write_atomic(&sub, b"x").expect_err("a directory is not replaced").to_string();
    assert!(msg.contains("is a directory"), "{msg}");
    assert!(sub.is_dir());
    // a regular file is replaced
    let file = dir.path().join("f");
    std::fs::write(&file, b"old").unwrap();
    write_atomic(&file, b"new").unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), b"new");
}
