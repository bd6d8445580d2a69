//! Helpers the test suites and benchmarks share: a scratch PostgreSQL database per test.
//!
//! The PostgreSQL tests run against the server named by `LAMBDA_TEST_POSTGRES` (a URL whose user may
//! create databases, e.g. `postgres://lambda@127.0.0.1:55432/postgres`; `.ci/run` starts one with
//! `deploy/postgres/scratch-cluster`). Without it each such test prints one `SKIPPED` line and passes,
//! unless `LAMBDA_REQUIRE_POSTGRES=1` (set by CI) makes a missing server a failure.

/// The environment variable naming the test server.
pub const POSTGRES_ENV: &str = "LAMBDA_TEST_POSTGRES";

/// A fresh database on the test server for `test` (its URL), or `None` after printing
/// `SKIPPED <test> (set LAMBDA_TEST_POSTGRES=...)` when no server is configured.
///
/// Panics when the server is configured but refuses, or when `LAMBDA_REQUIRE_POSTGRES=1` and none is.
pub async fn scratch_postgres(test: &str) -> Option<String> {
    match std::env::var(POSTGRES_ENV) {
        Ok(admin) if !admin.is_empty() => Some(
            crate::store::create_scratch_postgres_database(&admin, test)
                .await
                .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={}: {e}", crate::store::redact(&admin))),
        ),
        _ => {
            assert!(
                std::env::var("LAMBDA_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                "LAMBDA_REQUIRE_POSTGRES=1 but {POSTGRES_ENV} is not set"
            );
            // straight to the stream: the test harness captures print macros of passing tests
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test} on PostgreSQL (set {POSTGRES_ENV}=postgres://user@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// The environment variable naming the ScyllaDB/Cassandra contact points of the test cluster.
pub const SCYLLA_ENV: &str = "SCYLLA_NODES";

/// A fresh keyspace on the cluster named by `SCYLLA_NODES` (`host:9042[,host:9042...]`) for `test`: the store
/// URL (the keyspace is created when the store opens, replication_factor 1), or `None` after printing
/// `SKIPPED <test> on ScyllaDB (set SCYLLA_NODES=host:9042)` when no cluster is configured. No ScyllaDB
/// server can run on the CI machines, so these tests skip there; point them at a cluster to run them.
pub fn scratch_scylla(test: &str) -> Option<String> {
    match std::env::var(SCYLLA_ENV) {
        Ok(nodes) if !nodes.trim().is_empty() => {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let name: String = test
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .take(24)
                .collect();
            let keyspace = format!("lt_{name}_{:x}{:x}", std::process::id(), stamp.subsec_nanos());
            Some(format!("scylla://{}/{}?replication_factor=1", nodes.trim(), &keyspace[..keyspace.len().min(48)]))
        }
        _ => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test} on ScyllaDB (set {SCYLLA_ENV}=host:9042)");
            None
        }
    }
}

/// A manifest of `generation` with these (partition, cutoff) pairs, zero counters and no notes, finished
/// now: what tests publish when they stand in for a batch run.
pub fn manifest(generation: i64, cutoffs: &[(i32, i64)]) -> crate::store::Manifest {
    let now = chrono::Utc::now();
    crate::store::Manifest {
        generation,
        cutoffs: cutoffs.iter().copied().collect(),
        archive_starts: Default::default(),
        rows: Default::default(),
        records_scanned: 0,
        repeated_records_removed: 0,
        duplicates_removed: 0,
        records_without_dedup_key: 0,
        cutoff_notes: vec![],
        log_ends: Default::default(),
        cutoff_progress: Default::default(),
        started_at: now,
        finished_at: now,
    }
}
