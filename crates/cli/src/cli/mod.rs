//! The subcommands, one module each, over the library: `train`, `eval`,
//! `predict`, `inspect`, `recompute-stats`, `experiment` and `bench`.
//! Exit codes: 0 success, 2 a user error (bad option, bad file) with a
//! one-line message saying what to do, 1 anything else.

mod bench;
mod eval;
mod experiment;
mod inspect;
mod predict;
mod recompute;
mod train;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "normlab",
    version,
    about = "Batch normalization, done right and fast: the d2l chapter's LeNet on Fashion-MNIST",
    after_help = "Examples:\n  normlab train                          # the chapter: BNLeNet, 10 epochs, batch 128, lr 0.1\n  normlab eval --checkpoint runs/bn-lenet-*/model.safetensors\n  normlab inspect --checkpoint model.safetensors --layer net.1"
)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Train(train::TrainArgs),
    Eval(eval::EvalArgs),
    Predict(predict::PredictArgs),
    Inspect(inspect::InspectArgs),
    RecomputeStats(recompute::RecomputeArgs),
    Experiment(experiment::ExperimentArgs),
    Bench(bench::BenchArgs),
}

/// Where the data comes from, shared by the commands that read it.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Directory holding the four Fashion-MNIST files (else $NORMLAB_DATA,
    /// /usr/share/datasets/fashion-mnist, the cache, or a download).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    pub fn source(&self, progress: bool) -> crate::locate::DataSource {
        crate::locate::DataSource { data_dir: self.data_dir.clone(), progress, ..Default::default() }
    }
}

/// True when progress bars should be drawn.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Set once stdout's reader has gone away.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Prints one line of results on stdout. A reader that went away
/// (`normlab train --json | head -1`) does not stop the command: `train`
/// and `experiment` go on, since their files are their real output, and
/// print nothing more. Any other write error (a full disk) is an error.
pub fn print_line(line: &str) -> anyhow::Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!("cannot write the results to stdout: {e}")),
    }
}

/// A line for people on stderr; one that cannot be written is dropped
/// (the command's work does not depend on its reader).
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    // train and experiment write files that outlive their reader: for them
    // a closed pipe is an error to ignore (print_line), not a signal to die
    if !matches!(cli.command, Command::Train(_) | Command::Experiment(_)) {
        restore_sigpipe();
    }
    // a NORMLAB_ISA the kernels would ignore is a mistake to point out
    if let Err(message) = normlab::isa::from_env() {
        note(&format!("error: {message}"));
        return 2;
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = cli.threads {
        pool = pool.num_threads(t as usize);
        // more threads than cores only wait for each other (1000 on 2 cores ran 30x slower)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if t as usize > cores {
            note(&format!(
                "warning: --threads {t} is more than this machine's {cores} cores; it will run slower, not faster"
            ));
        }
    }
    let pool = match pool.build() {
        Ok(pool) => pool,
        Err(e) => {
            note(&format!("error: cannot start the worker threads: {e}"));
            return 1;
        }
    };
    // The command runs on one of the pool's threads, not on the main thread:
    // a parallel loop started from outside the pool hands its work over and
    // sleeps until woken, which cost 25-100 µs per loop here (11-34 µs from
    // inside), a large share of a 3 ms training step of ~20 parallel loops.
    let result = pool.install(|| match cli.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::RecomputeStats(a) => recompute::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Bench(a) => bench::run(a),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            let user = e.downcast_ref::<normlab::Error>().is_some_and(|e| e.is_user_error());
            // one line, whatever the underlying library put in its message
            let msg = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            note(&format!("error: {msg}"));
            if user {
                2
            } else {
                1
            }
        }
    }
}

/// `YYYYMMDD-HHMMSS` in UTC, for run directory names.
pub fn utc_timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Rust ignores SIGPIPE, so `normlab eval | head -1` would panic on the
/// closed pipe; a command-line tool should just stop, as `cat` does.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal to its default disposition at start-up,
    // before any other thread exists (the worker pool starts later).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
