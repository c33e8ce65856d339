//! normlab's integration tests: one module a file, all linked into this one
//! test binary (`it`). Each file used to be a binary of its own, and linking
//! fifteen of them against the optimized library took minutes of CI's
//! 20. One file's tests: `cargo test --release -p normlab --test it gradcheck::`.
//!
//! Shared modules: `common` (PyTorch fixtures and comparisons), `fuzz` (the
//! mutation harness; normlab-cli's test binary includes it too),
//! `data_files` (the committed subset, gzip, tiny data sets) and
//! `largest_alloc`, the global allocator that records the largest allocation
//! of the calling thread: per thread, so tests that run side by side in this
//! process do not disturb each other's measurement.

mod common;
#[path = "../../../../tests/support/data_files.rs"]
mod data_files;
mod fuzz;
#[path = "../../../../tests/support/largest_alloc.rs"]
mod largest_alloc;

mod data;
mod errors;
mod examples_api;
mod exercise7;
mod fold;
mod fused_vs_scratch;
mod fusion;
mod fuzz_idx;
mod gradcheck;
mod isa;
mod linear_packed;
mod model_spec;
mod numerics;
mod parity;
mod predict;
mod training_options;
mod write_atomic;
