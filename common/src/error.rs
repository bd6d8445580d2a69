//! The error type of the `common` crate.

use std::path::PathBuf;

/// Result alias of the `common` crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of configuration, decoding and the view store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be read or parsed; figment's message names the key and source.
    #[error("configuration: {0}")]
    ConfigLoad(Box<figment::Error>),
    /// A configuration value is present but invalid; `key` is its dotted path (e.g. `views[1].metrics[0]`).
    #[error("configuration key `{key}`: {message}")]
    ConfigInvalid { key: String, message: String },
    /// A view-store statement failed.
    #[error("view store ({table}): {source}")]
    Store {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A fenced write found its lease gone: another run took it over, or it expired (DESIGN.md §5).
    #[error("lost the {name} lease (token {token}, holder {holder}): another run took it over or it expired; this run writes nothing more")]
    Fenced { name: String, holder: String, token: i64 },
    /// A write the store contract forbids (e.g. rewriting a published generation).
    #[error("view store ({table}): refused: {message}")]
    StoreRefused { table: &'static str, message: String },
    /// A value read back from the store could not be interpreted.
    #[error("view store ({table}): corrupt value: {message}")]
    StoreCorrupt { table: &'static str, message: String },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// True when retrying the same operation later may succeed (a busy or unreachable store, an I/O hiccup).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Database(_)
            ),
            Error::Io { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigInvalid { key: key.into(), message: message.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
