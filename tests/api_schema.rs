//! The HTTP API against its own OpenAPI document (issue 12, item 4).
//!
//! The server holds batch and speed rows of the sample (a batch run over the first part, the speed layer
//! past it), answers behind bearer auth, with the answer cache on. Then:
//! - the document at `/openapi.json` is OpenAPI 3.1 and lists every route and every configured view with
//!   its dimensions, granularities and metrics (read from the config, not from the document);
//! - schemathesis (PyPI) generates requests from it, valid and invalid, and checks every response: never a
//!   5xx, status, content type, headers and body as documented, invalid input refused, auth not ignored,
//!   and our own check that every 400 names a parameter of the request or the operation
//!   (`tests/schemathesis/lambda_hooks.py`). Excluded: `positive_data_acceptance`, which expects a 2xx for
//!   every schema-valid request; JSON Schema cannot state the API's cross-parameter rules (`from` before
//!   `to`, `top` needs `order_by`, a dimension once in `group_by`, `serve.max_rows`), which answer 400.
//!
//! schemathesis is found at `LAMBDA_TEST_SCHEMATHESIS`, `~/.cache/schemathesis-venv/bin/schemathesis` (where
//! `.ci/run` installs it) or on `PATH`; without it that part prints SKIPPED, unless
//! `LAMBDA_REQUIRE_SCHEMATHESIS=1` (CI).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{external_tool, sample_messages, tool_candidates, Harness};

const TOKEN: &str = "schema-test-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_openapi_document() {
    let overrides = format!("[serve]\nauth_tokens = [\"{TOKEN}\"]\ncache_ttl = \"1s\"\nmax_rows = 3000\n");
    let mut h = Harness::start_with(2, &overrides).await;

    let doc: Value = h.http.get(format!("{}/openapi.json", h.base_url)).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().expect("paths");
    for route in ["/v1/views", "/v1/views/{view}", "/v1/manifest", "/healthz", "/metrics", "/openapi.json"] {
        assert!(paths.contains_key(route), "{route} is not documented: {:?}", paths.keys());
    }
    let views = common::view::ViewSet::new(&h.config);
    assert!(!views.views.is_empty());
    for view in &views.views {
        let op = &paths[&format!("/v1/views/{}", view.name)]["get"];
        let params: Vec<&Value> = op["parameters"].as_array().expect("parameters").iter().collect();
        let param = |name: &str| params.iter().find(|p| p["name"] == name).copied();
        for dimension in &view.dimensions {
            assert!(param(dimension).is_some(), "{}: no filter parameter for `{dimension}`", view.name);
        }
        let granularities: Vec<&str> = view.granularities.iter().map(|g| g.as_str()).collect();
        assert_eq!(param("granularity").unwrap()["schema"]["enum"], serde_json::json!(granularities));
        assert_eq!(param("granularity").unwrap()["required"], true);
        let order_by = param("order_by").unwrap()["schema"]["enum"].as_array().unwrap().len();
        assert_eq!(order_by, 3 * view.metric_names.len(), "{}", view.name);
        assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{}: bearer auth", view.name);
    }

    let Some(schemathesis) = external_tool(
        "LAMBDA_TEST_SCHEMATHESIS",
        "LAMBDA_REQUIRE_SCHEMATHESIS",
        &tool_candidates(".cache/schemathesis-venv/bin/schemathesis", "schemathesis"),
        "the_api_keeps_its_openapi_document (schemathesis part)",
        "no schemathesis: pip install schemathesis, or set LAMBDA_TEST_SCHEMATHESIS",
    ) else {
        h.shutdown().await;
        return;
    };

    // rows of every source: a batch generation over the first part, the speed layer past it
    let messages = sample_messages(&h.config);
    let (first, rest) = messages.split_at(3_000);
    h.start_speed();
    h.start_archiver();
    h.produce(first, None).await;
    h.wait_sealed_and_archived(Duration::from_secs(90)).await;
    let manifest = h.batch().await;
    assert!(manifest.records_scanned > 0);
    h.produce(&rest[..2_000], None).await;
    h.wait_sealed(Duration::from_secs(90)).await;

    let work = tempfile::tempdir().unwrap();
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let run = tokio::process::Command::new(&schemathesis)
        .args(["--no-color", "run", &format!("{}/openapi.json", h.base_url)])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "80", "--seed", "20261204", "--workers", "2"])
        .args(["--request-timeout", "20", "--generation-database", "none"])
        .env("SCHEMATHESIS_HOOKS", "lambda_hooks")
        .env("PYTHONPATH", &hooks)
        .current_dir(work.path()) // hypothesis keeps its example database in the working directory
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis finishes within 10 minutes")
        .expect("schemathesis runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    {
        use std::io::Write;
        let tail: String =
            text.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        let _ = writeln!(std::io::stderr(), "schemathesis:\n{tail}");
    }
    assert!(output.status.success(), "schemathesis found failures ({}):\n{text}", output.status);
    h.shutdown().await;
}
