//! Finding the external tools tests need (a broker binary, schemathesis); shared with the soak bench
//! (`benches/soak`), which includes this file and `broker.rs` by path.

/// An external tool a test needs (a broker binary, schemathesis): the path in the environment variable
/// `env`, else the first of `candidates` that is a file. Without one, `None` after one `SKIPPED <test>
/// (<hint>)` line, unless the environment variable `require` is `1` (CI), which makes it a failure.
pub fn external_tool(
    env: &str,
    require: &str,
    candidates: &[std::path::PathBuf],
    test: &str,
    hint: &str,
) -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(p.into());
    }
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    assert!(std::env::var(require).as_deref() != Ok("1"), "{require}=1 but no {env} and none of {candidates:?}");
    // straight to the stream: the test harness captures print macros of passing tests
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} ({hint})");
    None
}

/// `name` in each directory of `PATH`, and `$HOME/<home_relative>` first (where `.ci/run` caches tools).
pub fn tool_candidates(home_relative: &str, name: &str) -> Vec<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> =
        std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(home_relative)).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        found.extend(std::env::split_paths(&path).map(|d| d.join(name)));
    }
    found
}
