//! One error type for the library. Every variant says what went wrong and,
//! where a user can act on it, what to do.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor reached a layer with a shape it cannot take.
    #[error("{layer}: {message}")]
    Shape { layer: String, message: String },

    /// A configuration value is out of range (learning rate, batch size, ...).
    #[error("invalid {field}: {message}")]
    Config { field: String, message: String },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A data file (IDX, image) is not what it claims to be.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A checkpoint does not match the model or is damaged.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },

    /// Training produced a non-finite number.
    #[error("{0}")]
    Diverged(String),
}

impl Error {
    pub fn shape(layer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Shape { layer: layer.into(), message: message.into() }
    }
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config { field: field.into(), message: message.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data { path: path.into(), message: message.into() }
    }
    pub fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), message: message.into() }
    }
    /// True for errors the user caused and can fix (exit code 2 in the CLI).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Diverged(_))
    }
}
