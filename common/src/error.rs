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
    /// A ScyllaDB/Cassandra request failed; `retryable` says whether the same request may pass later
    /// (classified when the error is made, see `store::scylla`).
    /// (The driver's message already carries its causes, so `cause` is not chained again.)
    #[error("view store ({table}): {cause}")]
    Cql { table: &'static str, cause: Box<dyn std::error::Error + Send + Sync>, retryable: bool },
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
    ///
    /// A PostgreSQL error is retryable by its SQLSTATE class only (PostgreSQL manual, Appendix A): connection
    /// exceptions (08), serialization failures and deadlocks (40001, 40P01), insufficient resources (53),
    /// an administrator shutdown or crash (57P01-57P03), a lock timeout (55P03) and a read-only
    /// transaction after a failover (25006). Everything else (a value too long for an index, a missing
    /// table, a permission) will fail the same way again. SQLite's errors are `SQLITE_BUSY`-like and
    /// retried. A ScyllaDB/Cassandra error is retryable when the coordinator reported a timeout, an
    /// unavailable or overloaded replica set, or the connection broke (see `store::scylla::retryable`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
                sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    Some(pg) => retryable_sqlstate(pg.code()),
                    None => true,
                },
                _ => false,
            },
            Error::Cql { retryable, .. } => *retryable,
            Error::Io { .. } => true,
            _ => false,
        }
    }

    /// A configuration error naming `key` (a config key or a CLI option).
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ConfigInvalid { key: key.into(), message: message.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Whether a PostgreSQL SQLSTATE names a condition that can pass (see [`Error::is_retryable`]).
pub fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "25006")
}

#[cfg(test)]
mod tests {
    use super::retryable_sqlstate;

    #[test]
    fn only_passing_postgres_conditions_are_retried() {
        for code in ["08006", "08001", "40001", "40P01", "53300", "57P01", "55P03", "25006"] {
            assert!(retryable_sqlstate(code), "{code}");
        }
        // index row too big, invalid byte sequence, unique violation, permission, missing table, syntax
        for code in ["54000", "22021", "23505", "42501", "42P01", "42601", "22P05"] {
            assert!(!retryable_sqlstate(code), "{code}");
        }
    }
}
