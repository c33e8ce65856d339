//! Mutation testing of the IDX parsers (`idx::parse_images`,
//! `idx::parse_labels`) over real files, raw and gzip-compressed: no panic,
//! hang or unjustified allocation, and every error names the file. The
//! harness, its settings and the long mode are described in `fuzz/mod.rs`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use proptest::prelude::*;
use proptest::sample::Index;

use normlab::data::idx;

use crate::data_files;
use crate::fuzz;

use data_files::subset_dir as subset;
use fuzz::{apply, corpus_seeds, extreme, fuzz, gzip, mutation, Mutation, Target, Verdict};

#[derive(Clone, Debug)]
struct IdxCase {
    seed: Index,
    /// (header field 0..4 as a big-endian u32 at 4 * field, value)
    header: Vec<(u8, u64)>,
    raw: Vec<Mutation>,
    gzip: bool,
    compressed: Vec<Mutation>,
}

/// Raw IDX seeds: a few hundred images and labels of the subset, and the
/// corpus (gzip seeds expanded; the case decides whether to compress).
fn idx_seeds() -> Vec<Vec<u8>> {
    let fm = normlab::data::load_dir(&subset()).expect("the subset loads");
    let n = 300;
    let mut seeds = vec![
        idx::encode_images(&fm.train.images[..n * 784], n, 28, 28),
        idx::encode_labels(&fm.train.labels[..n]),
        idx::encode_images(&fm.test.images[..10 * 784], 10, 28, 28),
        idx::encode_labels(&fm.test.labels[..10]),
    ];
    seeds.extend(corpus_seeds("idx", true));
    seeds
}

/// The decoded length of an IDX input (gzip expanded, capped), for the
/// allocation bound: reading may take twice what it holds (Vec doubling).
fn decoded_len(bytes: &[u8]) -> usize {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut n = 0usize;
        let mut d = MultiGzDecoder::new(bytes);
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(k) = d.read(&mut buf) {
            if k == 0 || n > (idx::MAX_DATA_BYTES as usize) {
                break;
            }
            n += k;
        }
        n
    } else {
        bytes.len()
    }
}

#[test]
fn fuzz_idx_parsers() {
    let seeds = idx_seeds();
    let path = Path::new("fuzz.idx");
    let run = |bytes: &[u8]| {
        let images = idx::parse_images(bytes, path);
        let labels = idx::parse_labels(bytes, path);
        if let Ok(im) = &images {
            if im.bytes.len() != im.n * im.rows * im.cols {
                return Verdict::Wrong(format!("{} bytes for {} x {} x {}", im.bytes.len(), im.n, im.rows, im.cols));
            }
        }
        for e in [images.as_ref().err(), labels.as_ref().err()].into_iter().flatten() {
            let m = e.to_string();
            if !m.contains("fuzz.idx") {
                return Verdict::Wrong(format!("message does not name the file: {m}"));
            }
        }
        if images.is_ok() || labels.is_ok() {
            Verdict::Ok
        } else {
            Verdict::Err
        }
    };
    let strategy = (
        any::<Index>(),
        prop::collection::vec((0u8..4, extreme()), 0..3),
        prop::collection::vec(mutation(), 0..4),
        any::<bool>(),
        prop::collection::vec(mutation(), 0..3),
    )
        .prop_map(|(seed, header, raw, gzip, compressed)| IdxCase { seed, header, raw, gzip, compressed });
    fuzz(
        Target {
            name: "idx",
            time_bound: Duration::from_secs(2),
            alloc_bound: &|b| 2 * decoded_len(b) + (1 << 20),
            run: &run,
            describe: &|b| if b.starts_with(&[0x1f, 0x8b]) { "gzip".into() } else { "raw".into() },
        },
        strategy,
        |c: &IdxCase| {
            let mut b = seeds[c.seed.index(seeds.len())].clone();
            for &(field, v) in &c.header {
                let p = 4 * field as usize;
                if p + 4 <= b.len() {
                    b[p..p + 4].copy_from_slice(&(v as u32).to_be_bytes());
                }
            }
            for m in &c.raw {
                apply(&mut b, m, None);
            }
            if c.gzip {
                b = gzip(&b);
                for m in &c.compressed {
                    apply(&mut b, m, None);
                }
            }
            b
        },
    );
}
