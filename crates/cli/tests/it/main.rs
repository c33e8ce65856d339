//! normlab-cli's integration tests: one module a file, all linked into this
//! one test binary (`it`). Each file used to be a binary of its own, and
//! linking twenty-one of them against the optimized library took minutes of
//! CI's 20. One file's tests: `cargo test --release -p normlab-cli --test it hostile_runs::`.
//!
//! Shared modules: `common` (running the `normlab` binary with a hang guard,
//! the committed data, trained checkpoints), `fuzz` (normlab's mutation
//! harness), `data_files` (the subset, gzip, tiny data sets) and
//! `largest_alloc`, the global allocator that records the largest allocation
//! of the calling thread: per thread, so tests that run side by side in this
//! process do not disturb each other's measurement. Nothing here changes
//! process-wide state (environment, working directory, signal handlers):
//! the tests set such things on the `normlab` processes they start.

mod common;
#[path = "../../../../tests/support/data_files.rs"]
mod data_files;
#[path = "../../../normlab/tests/it/fuzz/mod.rs"]
mod fuzz;
#[path = "../../../../tests/support/largest_alloc.rs"]
mod largest_alloc;

mod commands;
mod corpus;
mod corrupt_checkpoints;
mod docs;
mod download;
mod experiments;
mod fold;
mod full_data;
mod full_disk;
mod fuzz_checkpoints;
mod fuzz_images;
mod hostile_inputs;
mod hostile_runs;
mod image_folder;
mod model_files;
mod onnx;
mod plot;
mod predict_images;
mod preset;
mod resume;
mod train_options;
mod user_errors;
