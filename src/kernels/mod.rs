//! The hot loops, and nothing else: no I/O, no policy, no shapes beyond what
//! the loop needs. Each has a plain reference it is tested against.

pub mod batch_norm;
pub mod conv;
pub mod gemm;
