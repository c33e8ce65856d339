//! The `normlab` application: the command line ([`cli`]), the chapter's
//! experiments with their reports ([`experiments`]), plots ([`plot`]), the
//! machine-relative benchmark ([`bench`]), finding or downloading
//! Fashion-MNIST, MNIST or KMNIST ([`locate`], [`download`]), image-folder
//! data sets ([`folder`], [`images`]), and the output directories
//! runs own ([`rundir`]). Everything numerical is the `normlab` library's;
//! this crate decides what to run and shows it.

pub mod bench;
pub mod cli;
pub mod download;
pub mod experiments;
pub mod folder;
pub mod images;
pub mod locate;
pub mod onnx;
pub mod plot;
pub mod rundir;
