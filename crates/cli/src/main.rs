//! The `normlab` command line: see `normlab --help`.

fn main() {
    let code = normlab_cli::cli::main();
    report_peak_rss();
    std::process::exit(code);
}

/// With `NORMLAB_PEAK_RSS_FILE` set (the integration tests set it), writes
/// this process's peak resident memory since its exec (`VmHWM`, in kB) to
/// that file. A parent cannot read it once the process is gone, and the
/// `ru_maxrss` it gets when reaping also counts the parent's own memory at
/// the fork, so a run too short to be sampled from outside would report
/// the test process's size.
fn report_peak_rss() {
    let Some(path) = std::env::var_os("NORMLAB_PEAK_RSS_FILE") else { return };
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return };
    if let Some(kb) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
        // best effort: a test that finds no file falls back to its own samples
        let _ = std::fs::write(path, kb.trim().trim_end_matches("kB").trim());
    }
}
