//! The `normlab` command line: see `normlab --help`.

fn main() {
    std::process::exit(normlab_cli::cli::main());
}
