//! Writing files so that a crash never leaves a half-written file in place
//! of a good one: write a temporary file beside the target, flush it to
//! disk, rename it over the target, then sync the directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // a rename would put a regular file in place of a device (`--out
    // /dev/null` run as root replaced /dev/null), a FIFO or a directory's
    // entry: only a regular file (or nothing) is ever replaced
    if let Ok(meta) = fs::metadata(path) {
        if !meta.is_file() {
            let what = if meta.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
            return Err(Error::io(
                path,
                std::io::Error::other(format!("is {what}, and normlab writes only regular files: choose a file name")),
            ));
        }
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) and checks it can be written, with an error
/// that says so before hours of training are spent.
pub fn ensure_writable_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| {
        Error::io(
            dir,
            std::io::Error::new(e.kind(), format!("cannot create the directory ({e}); choose another --out")),
        )
    })?;
    let probe = dir.join(format!(".normlab-write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(|e| {
        Error::io(dir, std::io::Error::new(e.kind(), format!("directory is not writable ({e}); choose another --out")))
    })?;
    let _ = fs::remove_file(&probe);
    Ok(())
}
