//! Helpers shared by the command line's tests (the modules of `tests/it/`):
//! where the committed data lives, and [`normlab`], which runs the binary
//! with a hang guard and measures its wall time and peak memory. The
//! submodules hold the fixtures of one group of tests each.
#![allow(dead_code)] // each test binary uses a different part

pub mod checkpoints;
pub mod images;
pub mod runs;

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_normlab");

pub fn subset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/fashion-mnist-subset")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// No normlab command here should take longer; beyond it, it is a hang.
pub const HANG: Duration = Duration::from_secs(120);

/// What a run of `normlab` did.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub args: String,
    pub wall: Duration,
    /// Peak resident memory of the process (VmHWM, sampled every millisecond
    /// while it runs; 0 for a process too quick to be sampled).
    pub max_rss_kb: i64,
}

impl Out {
    pub fn ctx(&self) -> String {
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

    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {}", self.ctx());
        assert!(!self.stderr.contains("panicked"), "{}", self.ctx());
        self
    }

    /// stdout as one JSON value.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("normlab {}: stdout is not one JSON value ({e}):\n{}", self.args, self.stdout))
    }

    /// Exit code 2, one line on stderr starting with "error:" that contains
    /// every needle, nothing on stdout, no panic.
    pub fn user_error(&self, needles: &[&str]) -> &Self {
        assert!(self.stdout.is_empty(), "nothing on stdout on error: {}", self.ctx());
        self.fails_with(needles)
    }

    /// `user_error` for a command that may already have printed results.
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
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

pub type PreExec = Box<dyn FnMut() -> io::Result<()> + Send + Sync>;

/// Runs `normlab ARGS`, reaping it with `wait4` for its peak RSS; a run
/// longer than [`HANG`] is killed and fails the test.
pub fn normlab_with<S: AsRef<OsStr>>(args: &[S], pre_exec: Option<PreExec>) -> Out {
    let stdout = tempfile::tempfile().expect("temporary file");
    let stderr = tempfile::tempfile().expect("temporary file");
    // normlab writes its own peak RSS here as it exits (see its main.rs)
    let peak_dir = tempfile::tempdir().expect("temporary directory");
    let peak_file = peak_dir.path().join("peak-rss-kb");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        // the tests name their data explicitly; nothing from the environment
        .env_remove("NORMLAB_DATA")
        .env("NORMLAB_PEAK_RSS_FILE", &peak_file)
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
    let mut hwm_kb: Option<i64> = None;
    let bin = std::fs::canonicalize(BIN).expect("the normlab binary");
    loop {
        // VmHWM, the peak RSS of the process's own memory since its exec
        // (ru_maxrss would count this test process's memory at the fork).
        // Read only once /proc/PID/exe is normlab: before the exec the child
        // still has this test process's memory (a CI run read 247 MB there).
        let execed = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin);
        if let Some(st) = execed.then(|| std::fs::read_to_string(format!("/proc/{pid}/status")).ok()).flatten() {
            if let Some(kb) = st
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            {
                hwm_kb = Some(hwm_kb.unwrap_or(0).max(kb));
            }
        }
        // SAFETY: pid is our own child, not yet reaped; status and usage are
        // live locals wait4 writes into
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", io::Error::last_os_error());
        if start.elapsed() > HANG {
            // SAFETY: as above; the child is killed, then reaped once
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
    // the peak normlab reported as it exited, with the samples taken while
    // it ran; with neither (a run killed before its first sample), ru_maxrss,
    // which can only overstate (it includes this process's memory at the fork)
    let reported: Option<i64> = std::fs::read_to_string(&peak_file).ok().and_then(|v| v.trim().parse().ok());
    let max_rss_kb = match (reported, hwm_kb) {
        (Some(a), Some(b)) => a.max(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => usage.ru_maxrss,
    };
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    let read = |mut f: std::fs::File| {
        use std::io::Seek;
        let mut v = Vec::new();
        f.seek(io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Out {
        code,
        stdout: String::from_utf8(read(stdout)).expect("UTF-8 stdout"),
        stderr: String::from_utf8_lossy(&read(stderr)).into_owned(),
        args: args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        wall,
        max_rss_kb,
    }
}

pub fn normlab<S: AsRef<OsStr>>(args: &[S]) -> Out {
    normlab_with(args, None)
}
