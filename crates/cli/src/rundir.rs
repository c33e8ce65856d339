//! A run's directory belongs to one run: `train` and `experiment` claim
//! their output directory before any work, hold a lock in it while they
//! write, and leave nothing behind when they fail before their first
//! results are on disk.
//!
//! - A new directory is made with `create_dir`, which fails when the name
//!   exists: default names (`runs/bn-lenet-<UTC time>`) get a suffix
//!   (`-2`, `-3`, ...) instead of sharing a directory with a run started in
//!   the same second.
//! - A directory given with `--out` may exist if it is empty. One holding
//!   another run's files is refused (continue it with `--resume`, or replace
//!   it whole with `--force`); one holding anything else is refused even
//!   with `--force`, which never deletes files normlab did not write.
//! - `.normlab.lock` inside it is `flock`ed by the process writing there
//!   and names its pid: a second process is refused, naming the holder.
//!   The kernel drops the lock when its holder dies, so the lock of a killed
//!   run is simply taken over.
//! - Temporary files that killed processes left (`.NAME.tmp-PID`, see
//!   [`normlab::fsutil::temp_path`]) are removed by the next process that
//!   takes the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use normlab::{Error, Result};

/// The lock file of a directory in use.
pub const LOCK_FILE: &str = ".normlab.lock";

/// The files `normlab train` and `normlab experiment` write: a directory
/// holding one of them holds a run, and `--force` may replace it.
pub const RUN_FILES: [&str; 13] = [
    "run.json",
    "checkpoint.safetensors",
    "model.safetensors",
    "best.safetensors",
    "metrics.csv",
    "curves.svg",
    "curves.png",
    "report.md",
    "index.html",
    "epochs.csv",
    "runs.csv",
    "summary.csv",
    LOCK_FILE,
];

/// Which command claims the directory (its messages differ: only a
/// training run can be resumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Train,
    Experiment,
}

/// A claimed output directory, locked while this value lives. Dropped
/// before [`RunDir::keep`], it removes what the run wrote (and the
/// directory, if the run created it).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    lock: Option<File>,
    /// This process made the directory.
    created: bool,
    /// The directories above it this process made, deepest first.
    created_parents: Vec<PathBuf>,
    /// The directory holds another run, to be removed at [`RunDir::begin_writing`] (`--force`).
    replace: bool,
    /// Everything in the directory but the lock is this run's.
    writing: bool,
    /// The run's results are on disk: the directory stays whatever happens next.
    kept: bool,
}

impl RunDir {
    /// Claims `dir` (given with `--out`) for a new run: created if missing,
    /// else accepted if empty, or if it holds another run and `force`.
    pub fn claim(dir: &Path, force: bool, owner: Owner) -> Result<RunDir> {
        let created_parents = create_parents(dir)?;
        let created = match fs::create_dir(dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => false,
            Err(e) => {
                remove_empty(&created_parents);
                return Err(cannot_create(dir, e));
            }
        };
        let mut run = RunDir {
            path: dir.to_path_buf(),
            lock: None,
            created,
            created_parents,
            replace: false,
            writing: false,
            kept: false,
        };
        run.lock = Some(lock(dir, "choose another --out")?);
        remove_stale_temporaries(dir);
        let others = foreign_entries(dir)?;
        if others.is_empty() {
            return Ok(run);
        }
        let holds_run = others.iter().any(|n| RUN_FILES.contains(&n.as_str()));
        let d = dir.display();
        if !holds_run {
            return Err(refuse(
                dir,
                format!(
                    "the directory is not empty and holds no normlab run ({} ...); --force never deletes \
                     files normlab did not write: choose a new or empty directory for --out",
                    others[0]
                ),
            ));
        }
        if !force {
            let how = match owner {
                Owner::Train => format!("continue it with `normlab train --resume {d}`, or "),
                Owner::Experiment => String::new(),
            };
            let what = match owner {
                Owner::Train => "another run",
                Owner::Experiment => "the results of another experiment",
            };
            return Err(refuse(
                dir,
                format!("already holds {what}; {how}add --force to replace it whole, or choose another --out"),
            ));
        }
        run.replace = true;
        Ok(run)
    }

    /// Claims a new directory `parent/stem` for a run without `--out`; if
    /// the name is taken, `parent/stem-2`, `parent/stem-3`, ...
    pub fn claim_new(parent: &Path, stem: &str) -> Result<RunDir> {
        let mut created_parents = create_parents(&parent.join(stem))?;
        for i in 1..=10_000 {
            let dir = if i == 1 { parent.join(stem) } else { parent.join(format!("{stem}-{i}")) };
            match fs::create_dir(&dir) {
                Ok(()) => {
                    let mut run = RunDir {
                        path: dir,
                        lock: None,
                        created: true,
                        created_parents,
                        replace: false,
                        writing: false,
                        kept: false,
                    };
                    run.lock = Some(lock(&run.path, "choose another --out")?);
                    return Ok(run);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    remove_empty(&created_parents);
                    return Err(cannot_create(&dir, e));
                }
            }
        }
        remove_empty(&std::mem::take(&mut created_parents));
        Err(refuse(parent, format!("holds 10,000 runs named {stem}-N already; give a directory with --out")))
    }

    /// Takes the directory of an earlier run, to continue it (`--resume`):
    /// it is never removed, whatever happens.
    pub fn resume(dir: &Path) -> Result<RunDir> {
        if !dir.is_dir() {
            let what = if dir.exists() { "is not a directory" } else { "does not exist" };
            return Err(refuse(
                dir,
                format!("{what}; --resume takes the directory of a run (the --out of `normlab train`)"),
            ));
        }
        let lock = lock(dir, "wait for it to end before resuming")?;
        remove_stale_temporaries(dir);
        Ok(RunDir {
            path: dir.to_path_buf(),
            lock: Some(lock),
            created: false,
            created_parents: Vec::new(),
            replace: false,
            writing: true,
            kept: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Called before the run's first file is written: the run that
    /// `--force` replaces is removed now, not before (a run that fails
    /// earlier leaves it as it was).
    pub fn begin_writing(&mut self) -> Result<()> {
        if !self.writing {
            if self.replace {
                self.remove_contents()?;
                self.replace = false;
            }
            self.writing = true;
        }
        Ok(())
    }

    /// The run's results are on disk: the directory stays, whatever happens next.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Removes every entry but the lock.
    fn remove_contents(&self) -> Result<()> {
        for name in foreign_entries(&self.path)? {
            let p = self.path.join(&name);
            let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(|e| {
                Error::io(&p, io::Error::new(e.kind(), format!("cannot remove the replaced run's file ({e})")))
            })?;
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.kept && self.writing {
            let _ = self.remove_contents();
        }
        if self.lock.is_some() {
            // unlinked while still held, so that no one locks a file that is going away
            let _ = fs::remove_file(self.path.join(LOCK_FILE));
            self.lock = None;
        }
        if !self.kept && self.created {
            // only if empty: a process that found the directory after we made it may use it
            let _ = fs::remove_dir(&self.path);
            remove_empty(&self.created_parents);
        }
    }
}

/// Creates the missing directories above `dir`; returns them, deepest first.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = dir.parent();
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Err(e) = fs::create_dir_all(parent) {
            remove_empty(&missing);
            return Err(cannot_create(dir, e));
        }
    }
    Ok(missing)
}

/// Removes each of `dirs` (deepest first) that is empty.
fn remove_empty(dirs: &[PathBuf]) {
    for d in dirs {
        let _ = fs::remove_dir(d);
    }
}

fn refuse(dir: &Path, message: String) -> Error {
    Error::io(dir, io::Error::other(message))
}

fn cannot_create(dir: &Path, e: io::Error) -> Error {
    refuse(dir, format!("cannot create the directory ({e}); choose another --out"))
}

/// True for the names of temporary files of [`normlab::fsutil`] and of
/// write probes: `.NAME.tmp-PID`, `.normlab-write-test-PID`.
fn temporary_pid(name: &str) -> Option<u32> {
    if !name.starts_with('.') {
        return None;
    }
    let (_, pid) = name.rsplit_once(".tmp-").or_else(|| name.rsplit_once("-write-test-"))?;
    pid.parse().ok()
}

/// Whether process `pid` exists (it may belong to someone else).
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes the temporary files of processes that no longer exist.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = temporary_pid(&name) {
            if pid != me && !alive(pid) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The entries of `dir` other than the lock and temporary files, sorted.
fn foreign_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE && temporary_pid(n).is_none())
        .collect();
    names.sort();
    Ok(names)
}

/// Takes `dir`'s lock, or says who holds it; `fix` ends that message.
fn lock(dir: &Path, fix: &str) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    loop {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| refuse(dir, format!("cannot write in the directory ({e}); choose another --out")))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                // a file system without locks (some network ones): go on unlocked
                return Ok(f);
            }
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) => format!("normlab process {pid}"),
                Err(_) => "another normlab process".to_string(),
            };
            return Err(refuse(dir, format!("in use by {holder} (it holds {LOCK_FILE}); {fix}")));
        }
        // the holder before us may have removed the file between our open
        // and our lock: a lock on a file no longer there keeps no one out
        let same = fs::metadata(&path)
            .ok()
            .zip(f.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
        if !same {
            continue;
        }
        let written = f.set_len(0).and_then(|_| f.rewind()).and_then(|_| writeln!(f, "{}", std::process::id()));
        written.map_err(|e| refuse(dir, format!("cannot write in the directory ({e}); choose another --out")))?;
        return Ok(f);
    }
}
