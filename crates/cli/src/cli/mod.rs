//! The subcommands, one module each, over the library: `train`, `eval`,
//! `predict`, `inspect`, `recompute-stats`, `experiment`, `bench`,
//! `export` and `fold`.
//! Exit codes: 0 success, 2 a user error (bad option, bad file) with a
//! one-line message saying what to do, 1 anything else (a failed write
//! to stdout included).

/// `println!` that returns an error instead of panicking when stdout cannot
/// be written (`> /dev/full`); use it with `?` in a function returning
/// `anyhow::Result`.
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))? };
}

/// `print!` that returns an error instead of panicking, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*))? };
}

mod args;
mod bench;
mod eval;
mod experiment;
mod export;
mod fold;
mod inspect;
mod predict;
mod recompute;
mod train;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "normlab",
    version,
    about = "Batch normalization, done right and fast: the d2l chapter's LeNet on Fashion-MNIST",
    after_help = "Examples:\n  normlab train                          # the chapter: BNLeNet, 10 epochs, batch 128, lr 0.1\n  normlab eval --checkpoint runs/bn-lenet-*/model.safetensors\n  normlab inspect --checkpoint model.safetensors --layer net.1"
)]
struct Cli {
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, global = true, allow_negative_numbers = true,
          value_parser = args::Count { min: 1, max: 1024, example: "2" })]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // boxed: its many options make it the largest variant by far
    Train(Box<train::TrainArgs>),
    Eval(eval::EvalArgs),
    Predict(predict::PredictArgs),
    Inspect(inspect::InspectArgs),
    RecomputeStats(recompute::RecomputeArgs),
    Experiment(experiment::ExperimentArgs),
    Bench(bench::BenchArgs),
    Export(export::ExportArgs),
    Fold(fold::FoldArgs),
}

/// Where the data comes from, shared by the commands that read it.
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// fashion-mnist | mnist | kmnist (downloaded if not found) | image-folder
    /// (--data-dir DIR holding train/<class>/*.png|jpg and test/<class>/...)
    /// [default: fashion-mnist, or what the checkpoint or run was trained on]
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<String>,
    /// Directory holding the four files of the data set (for Fashion-MNIST
    /// else $NORMLAB_DATA, /usr/share/datasets/fashion-mnist, the cache, or a
    /// download), or the image folder.
    #[arg(long, value_name = "DIR", value_parser = args::PathArg)]
    pub data_dir: Option<PathBuf>,
    /// Image folders: the most memory the resized images may take, in MiB
    /// [default: half the available memory].
    #[arg(long, value_name = "MIB", allow_negative_numbers = true, value_parser = args::count(1, "2048"))]
    pub max_data_mib: Option<usize>,
}

impl DataArgs {
    /// Fashion-MNIST's search (the IDX set of `--dataset`, if one).
    pub fn source(&self, progress: bool) -> crate::locate::DataSource {
        let set = match self.dataset.as_deref().map(crate::locate::DataChoice::parse) {
            Some(Ok(crate::locate::DataChoice::Idx(set))) => set,
            _ => crate::download::IdxSet::FashionMnist,
        };
        crate::locate::DataSource { set, data_dir: self.data_dir.clone(), progress, ..Default::default() }
    }

    /// `--dataset`, else `default`.
    pub fn choice(&self, default: crate::locate::DataChoice) -> normlab::Result<crate::locate::DataChoice> {
        self.dataset.as_deref().map_or(Ok(default), crate::locate::DataChoice::parse)
    }

    /// Loads the data chosen (`--dataset`, else `default`); image folders
    /// get `channels` (`None`: from the images) and are resized to
    /// `rows` x `cols`.
    pub fn load(
        &self,
        default: crate::locate::DataChoice,
        progress: bool,
        channels: Option<usize>,
        rows: usize,
        cols: usize,
    ) -> normlab::Result<(crate::locate::DataChoice, normlab::data::Dataset)> {
        let choice = self.choice(default)?;
        let data =
            crate::locate::load_choice(choice, self.data_dir.as_deref(), progress, &self.folder(channels, rows, cols))?;
        Ok((choice, data))
    }

    /// Loads `choice` from `dir` (a run's recorded directory), whatever
    /// `--dataset` and `--data-dir` say.
    pub fn load_from(
        &self,
        choice: crate::locate::DataChoice,
        dir: &std::path::Path,
        progress: bool,
        channels: Option<usize>,
        rows: usize,
        cols: usize,
    ) -> normlab::Result<normlab::data::Dataset> {
        crate::locate::load_choice(choice, Some(dir), progress, &self.folder(channels, rows, cols))
    }

    fn folder(&self, channels: Option<usize>, rows: usize, cols: usize) -> crate::folder::FolderOptions {
        crate::folder::FolderOptions {
            channels,
            rows,
            cols,
            max_bytes: self.max_data_mib.map_or_else(crate::folder::default_max_bytes, |m| (m as u64) << 20),
        }
    }
}

/// True when progress bars should be drawn.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Set once stdout's reader has gone away (see [`write_stdout`]).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// stdout could not be written: a full device, say. Not the user's mistake
/// in the command: exit code 1.
#[derive(Debug)]
pub struct StdoutError(std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot write the results to stdout ({}); free space where stdout goes, or redirect it to another file",
            self.0
        )
    }
}

impl std::error::Error for StdoutError {}

/// Writes `args` to stdout and flushes, so that a failure is reported here
/// (by [`outln!`]) rather than lost at exit. A reader that went away
/// (`normlab train --json | head -1`; only seen where SIGPIPE is ignored:
/// `train` and `experiment`, whose files are their real output) does not
/// stop the command: it goes on and prints nothing more.
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(StdoutError(e)),
    }
}

/// One line of results on stdout, as [`write_stdout`].
pub fn print_line(line: &str) -> Result<(), StdoutError> {
    write_stdout(format_args!("{line}\n"))
}

/// A line for people on stderr; one that cannot be written is dropped
/// (there is nowhere left to say so, and the command's work does not
/// depend on its reader), rather than a panic as with `eprintln!`.
pub fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // --help and --version, in full on stdout
        Err(e) if !e.use_stderr() => {
            return match write_stdout(format_args!("{}", e.render())) {
                Ok(()) => 0,
                Err(e) => {
                    say(format_args!("error: {e}"));
                    1
                }
            };
        }
        Err(e) => {
            say(format_args!("{}", args::one_line(&e, &command_line_command())));
            return 2;
        }
    };
    // train and experiment write files that outlive their reader: for them
    // a closed pipe is an error to ignore (print_line), not a signal to die
    if !matches!(cli.command, Command::Train(_) | Command::Experiment(_)) {
        restore_sigpipe();
    }
    // a NORMLAB_ISA the kernels would ignore is a mistake to point out
    if let Err(message) = normlab::isa::from_env() {
        say(format_args!("error: {message}"));
        return 2;
    }
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(t) = cli.threads {
        pool = pool.num_threads(t);
        // more threads than cores only wait for each other (1000 on 2 cores ran 30x slower)
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if t > cores {
            say(format_args!(
                "warning: --threads {t} is more than this machine's {cores} cores; it will run slower, not faster"
            ));
        }
    }
    let pool = match pool.build() {
        Ok(pool) => pool,
        Err(e) => {
            say(format_args!("error: cannot start the worker threads: {e}"));
            return 1;
        }
    };
    // The command runs on one of the pool's threads, not on the main thread:
    // a parallel loop started from outside the pool hands its work over and
    // sleeps until woken, which cost 25-100 µs per loop here (11-34 µs from
    // inside), a large share of a 3 ms training step of ~20 parallel loops.
    let result = pool.install(|| match cli.command {
        Command::Train(a) => train::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::RecomputeStats(a) => recompute::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Export(a) => export::run(a),
        Command::Fold(a) => fold::run(a),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            let user = e.downcast_ref::<normlab::Error>().is_some_and(|e| e.is_user_error());
            // one line, whatever the underlying library put in its message
            let msg = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            let hint = e.downcast_ref::<normlab::Error>().map_or("", what_to_do);
            say(format_args!("error: {msg}{hint}"));
            if user {
                2
            } else {
                1
            }
        }
    }
}

/// A loss or probability that is not a number means the model's outputs
/// overflow (weights near f32's limit pass every check on load): refused
/// rather than printed, naming the checkpoint.
pub fn refuse_non_finite(checkpoint: &std::path::Path, what: &str, value: f64) -> normlab::Result<()> {
    if value.is_finite() {
        return Ok(());
    }
    Err(normlab::Error::checkpoint(
        checkpoint,
        format!(
            "{what} is {value}: the model's outputs overflow, its weights are far too large for a trained network; \
             the file is damaged, use another checkpoint"
        ),
    ))
}

/// `normlab SUBCOMMAND` as typed (the first argument that names one), for
/// the pointer to its --help; `normlab` when there is none.
fn command_line_command() -> String {
    let cli = Cli::command();
    let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    std::env::args_os()
        .skip(1)
        .find_map(|a| a.to_str().filter(|a| names.contains(a)).map(|a| format!("normlab {a}")))
        .unwrap_or_else(|| "normlab".to_string())
}

/// The fix for an operating-system error that only says what happened
/// ("No space left on device"), appended to its message.
fn what_to_do(e: &normlab::Error) -> &'static str {
    let normlab::Error::Io { source, .. } = e else { return "" };
    if source.raw_os_error().is_none() {
        // a message of normlab's own, which already says what to do
        return "";
    }
    match source.kind() {
        std::io::ErrorKind::StorageFull => "; free some space on that disk, or choose an output on another one",
        std::io::ErrorKind::QuotaExceeded => "; your disk quota is used up: free some space or write elsewhere",
        std::io::ErrorKind::ReadOnlyFilesystem => "; that file system is read-only: choose another place to write",
        std::io::ErrorKind::PermissionDenied => "; check the permissions, or choose another path",
        _ => "",
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
