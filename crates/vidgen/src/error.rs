//! The library's error type: what went wrong, in words a user can act on.

use std::path::PathBuf;

/// Errors at the library boundary. Model code below it returns `candle_core::Result`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model folder is not laid out as a diffusers pipeline.
    #[error("{path} is not a model folder: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    /// A config file is malformed or names something vidgen cannot run.
    #[error("bad config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    /// The folder holds a pipeline or component class vidgen does not support.
    #[error("unsupported {what} `{name}`; supported: {supported}")]
    Unsupported {
        what: &'static str,
        name: String,
        supported: String,
    },
    /// A weight file is missing, truncated or not safetensors.
    #[error("bad weights {path}: {reason}")]
    BadWeights { path: PathBuf, reason: String },
    /// The request cannot be satisfied by this model (size, steps, guidance…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A NaN or infinity appeared in latents or frames.
    #[error("non-finite values in {0}")]
    NonFinite(String),
    /// The generation was cancelled through its request's cancel flag.
    #[error("cancelled")]
    Cancelled,
    /// An error from the tensor library.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An `Io` error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
