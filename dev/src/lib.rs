//! Profiling probes live in `examples/`; this crate has no code of its own.
