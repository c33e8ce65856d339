//! The `normlab` command line: see `normlab --help`.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
