//! One error type for the library. Every variant says what went wrong and,
//! where a user can act on it, what to do.

use std::path::PathBuf;

/// `std::result::Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library; its `Display` is a message
/// for the user (see [`Error::is_user_error`] for which ones the user can fix).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor reached a layer with a shape it cannot take.
    #[error("{layer}: {message}")]
    Shape {
        /// The layer (or type) that refused it, e.g. `Conv2d`.
        layer: String,
        /// What was expected and what arrived.
        message: String,
    },

    /// A configuration value is out of range (learning rate, batch size, ...).
    #[error("invalid {field}: {message}")]
    Config {
        /// The setting, in words (`learning rate`, `batch size`).
        field: String,
        /// The value given and the range it must be in.
        message: String,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A data file (IDX, image) is not what it claims to be.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file that is wrong.
        path: PathBuf,
        /// What is wrong with it and what to do.
        message: String,
    },

    /// A checkpoint does not match the model or is damaged.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not match or is damaged.
        message: String,
    },

    /// Training produced a non-finite number (NaN or infinity); the message
    /// says where.
    #[error("{0}")]
    Diverged(String),
}

impl Error {
    /// An [`Error::Shape`] from `layer`.
    pub fn shape(layer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape { layer: layer.into(), message: message.into() }
    }
    /// An [`Error::Config`] for the setting `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { field: field.into(), message: message.into() }
    }
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// An [`Error::Data`] about the file at `path`.
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
    /// An [`Error::Checkpoint`] about the checkpoint at `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), message: message.into() }
    }
    /// True for errors the user caused and can fix (exit code 2 in the CLI).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Diverged(_))
    }
}
