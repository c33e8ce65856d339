//! The repository's own reference page, docs/spec.md, agrees with the code:
//! its checksum table is the downloader's, and every place that cites it
//! names a section it has.

use std::path::{Path, PathBuf};

use normlab_cli::download::FASHION_MNIST_FILES;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn spec() -> String {
    let path = root().join("docs/spec.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows `| name | sha256 | bytes |` of the page's checksum table.
fn checksum_rows(page: &str) -> Vec<(String, String, u64)> {
    page.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
            match cells.as_slice() {
                [name, sha, bytes] if name.ends_with(".gz") => {
                    Some((name.to_string(), sha.to_string(), bytes.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

#[test]
fn the_checksum_table_is_the_downloaders() {
    let rows = checksum_rows(&spec());
    let code: Vec<(String, String, u64)> =
        FASHION_MNIST_FILES.iter().map(|f| (f.name.to_string(), f.sha256.to_string(), f.len)).collect();
    assert_eq!(rows, code, "docs/spec.md's table and download::FASHION_MNIST_FILES differ");
}

/// Every file under `dir` whose name ends with one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "fixtures" && name != "corpus" {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

#[test]
fn every_citation_of_the_spec_names_one_of_its_sections() {
    let page = spec();
    let headings: Vec<&str> =
        page.lines().filter_map(|l| l.strip_prefix('#')).map(|h| h.trim_start_matches('#').trim()).collect();
    let mut sources = Vec::new();
    for dir in ["crates", "dev", "tools", "bench", "tests"] {
        files(&root().join(dir), &[".rs", ".py", ".md", ".sh"], &mut sources);
    }
    files(&root(), &["README.md", "PERFORMANCE.md"], &mut sources);
    assert!(sources.len() > 50, "found only {} source files under {}", sources.len(), root().display());
    let mut cited = 0;
    // this file spells the patterns out
    for path in sources.iter().filter(|p| !p.ends_with("crates/cli/tests/it/docs.rs")) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            // the page it replaced lived outside the repository
            assert!(
                !line.contains(concat!("SPEC", ".md")),
                "{}:{}: cites the old spec; cite docs/spec.md",
                path.display(),
                i + 1
            );
            // `docs/spec.md, "Section"` must name a heading of the page
            for (at, _) in line.match_indices("docs/spec.md, \"") {
                let rest = &line[at + "docs/spec.md, \"".len()..];
                let section = rest.split('"').next().unwrap_or("");
                assert!(
                    headings.contains(&section),
                    "{}:{}: cites section {section:?} of docs/spec.md, which has {headings:?}",
                    path.display(),
                    i + 1
                );
                cited += 1;
            }
        }
    }
    assert!(cited >= 2, "expected citations of docs/spec.md sections in the code, found {cited}");
}

/// README's time for `experiment all` is the sum that `experiment --help`
/// gives (each experiment's measured time), so the two cannot drift apart.
#[test]
fn the_readme_states_experiment_alls_measured_total() {
    let help = normlab_cli::experiments::help_list();
    let all = help.lines().find(|l| l.trim_start().starts_with("all ")).expect("the list ends with all");
    let total = all.split("(about ").nth(1).and_then(|t| t.split(',').next()).expect("all's time");
    for e in normlab_cli::experiments::all() {
        assert!(help.contains(&format!("  {} ", e.name)), "--help lists {}", e.name);
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let line = readme.lines().find(|l| l.contains("normlab experiment NAME|all")).expect("README shows the command");
    assert!(line.contains(&format!("all: about {total}")), "README says '{line}', but --help's sum is {total}");
}
