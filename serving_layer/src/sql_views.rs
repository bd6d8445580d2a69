//! SQL views with the merge rule of DESIGN.md §5, for BI tools (Superset) reading the SQLite or PostgreSQL
//! store, or the PostgreSQL mirror of a ScyllaDB store (DESIGN.md §7).
//!
//! For every configured view and granularity, `v_<view>_<granularity>` answers what
//! `GET /v1/views/<view>?granularity=<granularity>` answers, row for row:
//!
//! ```text
//! merged = batch rows of the current manifest's generation
//!        + speed rows whose segment_start >= C[partition]      (C = 0 for partitions the batch has not seen)
//! ```
//!
//! summed per (bucket, dimension values). The current manifest is the one of the largest generation (what
//! [`common::store::ViewStore::current_manifest`] reads), and its cutoffs are read from its JSON body, so one
//! statement sees one manifest and the rows of that moment (a SELECT is one snapshot on both databases; the
//! batch job deletes speed rows one manifest behind, DESIGN.md §5 step 5).
//!
//! Columns: `bucket_start` (PostgreSQL `timestamp`, UTC; SQLite text `YYYY-MM-DD HH:MM:SS`, UTC, the form
//! Superset's time filters compare on SQLite), one text column per dimension (NULL for a missing value), one
//! column per metric (counts: `bigint` / integer; sums: exact `numeric` with 6 decimal places on PostgreSQL,
//! `REAL` on SQLite, exact to the micro-unit while a sum stays below 2^53 micro-units, about 9e9), and
//! `source` (`batch`, `speed` or `both`, as in the API's answers).
//!
//! Two views serve the e-commerce default when the config has the views they need:
//! `v_funnel_by_category_day` (views, carts, purchases and conversion rates per category and day, from a day
//! view with dimensions `event_type` and `category_code`) and `v_revenue_by_brand_day` (purchase revenue and
//! purchases per brand and day, from a day view with dimensions `event_type` and `brand` and `sum:price`).
//!
//! [`script`] is the idempotent SQL `lambda views sql` prints; [`install`] applies it in one transaction,
//! dropping first every view an earlier install made (marked by [`MARK`]) so a view removed from the config
//! goes too.

use std::fmt::Write as _;

use common::error::{Error, Result};
use common::view::{Granularity, ResolvedMetric, View, ViewSet};
use sqlx::Connection;

/// The SQL dialect of the generated views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The dialect of a store or mirror URL (`sqlite:` or `postgres:`/`postgresql:`); `None` for others.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

impl std::str::FromStr for Dialect {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sqlite" => Ok(Dialect::Sqlite),
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            other => Err(format!("unknown dialect `{other}`; expected sqlite or postgres")),
        }
    }
}

/// The e-commerce views, which read the base views (dropped before them, created after them).
const FUNNEL_VIEW: &str = "v_funnel_by_category_day";
const REVENUE_VIEW: &str = "v_revenue_by_brand_day";

/// The text every generated view carries (a comment in its definition on SQLite, the view's COMMENT on
/// PostgreSQL): how [`install`] finds the views an earlier install made.
pub const MARK: &str = "lambda views install: generated from the view config";

/// One generated view: its name and its `SELECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlView {
    pub name: String,
    pub select: String,
}

/// The name of the view of `view` at `granularity`: `v_<view>_<granularity>`.
pub fn view_name(view: &str, granularity: Granularity) -> String {
    format!("v_{view}_{granularity}")
}

/// A double-quoted identifier (both dialects).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A single-quoted string literal (both dialects).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The generated views, base views first (the e-commerce views read them).
///
/// Errors: [`Error::ConfigInvalid`] naming `views` when a dimension or metric column would clash with
/// another column of its view (`bucket_start`, `source`, or a repeated name).
pub fn views(set: &ViewSet, dialect: Dialect) -> Result<Vec<SqlView>> {
    let mut out = Vec::new();
    for view in &set.views {
        check_columns(view)?;
        for &g in &view.granularities {
            out.push(SqlView { name: view_name(&view.name, g), select: merged_select(view, g, dialect) });
        }
    }
    out.extend(ecommerce_views(set, dialect));
    out.push(SqlView { name: "v_freshness".to_owned(), select: freshness_select(dialect) });
    Ok(out)
}

fn check_columns(view: &View) -> Result<()> {
    let mut seen = std::collections::BTreeSet::from(["bucket_start".to_owned(), "source".to_owned()]);
    for column in view.dimensions.iter().chain(&view.metric_names) {
        if !seen.insert(column.to_lowercase()) {
            return Err(Error::invalid(
                "views",
                format!(
                    "view `{}`: column `{column}` appears twice in its SQL view (bucket_start, source, the \
                     dimensions and the metric names must differ, case-insensitively)",
                    view.name
                ),
            ));
        }
    }
    Ok(())
}

/// The merge rule as one `SELECT` for `view` at `granularity`.
fn merged_select(view: &View, g: Granularity, dialect: Dialect) -> String {
    let (view_lit, g_lit) = (literal(&view.name), literal(g.as_str()));
    let mut sql = manifest_ctes(dialect).to_owned();
    let _ = write!(
        sql,
        "merged AS (\n\
         \x20   SELECT b.bucket_start, b.dims, b.metrics, 1 AS from_batch, 0 AS from_speed FROM batch_rows b\n\
         \x20   WHERE b.view = {view_lit} AND b.granularity = {g_lit}\n\
         \x20     AND b.generation = (SELECT generation FROM manifest)\n\
         \x20   UNION ALL\n\
         \x20   SELECT s.bucket_start, s.dims, s.metrics, 0, 1 FROM speed_rows s\n\
         \x20   LEFT JOIN cutoffs c ON c.kafka_partition = s.kafka_partition\n\
         \x20   WHERE s.view = {view_lit} AND s.granularity = {g_lit} AND s.segment_start >= coalesce(c.cutoff, 0)\n\
         )\n"
    );
    let mut columns = vec![match dialect {
        Dialect::Sqlite => "datetime(bucket_start, 'unixepoch') AS bucket_start".to_owned(),
        Dialect::Postgres => "(to_timestamp(bucket_start) AT TIME ZONE 'UTC') AS bucket_start".to_owned(),
    }];
    for (i, d) in view.dimensions.iter().enumerate() {
        columns.push(match dialect {
            Dialect::Sqlite => format!("json_extract(dims, '$[{i}]') AS {}", ident(d)),
            Dialect::Postgres => format!("(dims::jsonb ->> {i}) AS {}", ident(d)),
        });
    }
    for (i, (name, metric)) in view.metric_names.iter().zip(&view.metrics).enumerate() {
        let decimal = matches!(metric, ResolvedMetric::Sum { .. });
        columns.push(match (dialect, decimal) {
            (Dialect::Sqlite, false) => format!("sum(json_extract(metrics, '$[{i}]')) AS {}", ident(name)),
            (Dialect::Sqlite, true) => {
                format!("sum(json_extract(metrics, '$[{i}]')) / 1000000.0 AS {}", ident(name))
            }
            (Dialect::Postgres, false) => {
                format!("sum((metrics::jsonb ->> {i})::numeric)::bigint AS {}", ident(name))
            }
            (Dialect::Postgres, true) => {
                format!("sum((metrics::jsonb ->> {i})::numeric) * 0.000001 AS {}", ident(name))
            }
        });
    }
    columns.push(
        "CASE WHEN max(from_batch) = 1 AND max(from_speed) = 1 THEN 'both' \
         WHEN max(from_batch) = 1 THEN 'batch' ELSE 'speed' END AS source"
            .to_owned(),
    );
    let _ = write!(sql, "SELECT {}\nFROM merged\nGROUP BY merged.bucket_start, dims", columns.join(",\n       "));
    sql
}

/// The funnel and revenue views of the e-commerce default, for the day views that have what they need.
fn ecommerce_views(set: &ViewSet, dialect: Dialect) -> Vec<SqlView> {
    let has = |v: &View, dims: &[&str]| {
        v.granularities.contains(&Granularity::Day) && dims.iter().all(|d| v.dimensions.iter().any(|x| x == d))
    };
    let mut out = Vec::new();
    let ratio = |num: &str, den: &str| match dialect {
        Dialect::Sqlite => format!("CAST({num} AS REAL) / NULLIF({den}, 0)"),
        Dialect::Postgres => format!("round({num}::numeric / NULLIF({den}, 0), 6)"),
    };
    if let Some(v) = set.views.iter().find(|v| {
        has(v, &["event_type", "category_code"]) && v.metrics.iter().any(|m| matches!(m, ResolvedMetric::Count))
    }) {
        let base = ident(&view_name(&v.name, Granularity::Day));
        out.push(SqlView {
            name: FUNNEL_VIEW.to_owned(),
            select: format!(
                "SELECT bucket_start, category_code, views, carts, purchases,\n\
                 \x20      {} AS view_to_cart,\n\
                 \x20      {} AS cart_to_purchase,\n\
                 \x20      {} AS view_to_purchase\n\
                 FROM (SELECT bucket_start, category_code,\n\
                 \x20            sum(CASE WHEN event_type = 'view' THEN \"count\" ELSE 0 END) AS views,\n\
                 \x20            sum(CASE WHEN event_type = 'cart' THEN \"count\" ELSE 0 END) AS carts,\n\
                 \x20            sum(CASE WHEN event_type = 'purchase' THEN \"count\" ELSE 0 END) AS purchases\n\
                 \x20     FROM {base} WHERE event_type IN ('view', 'cart', 'purchase')\n\
                 \x20     GROUP BY bucket_start, category_code) AS f",
                ratio("carts", "views"),
                ratio("purchases", "carts"),
                ratio("purchases", "views"),
            ),
        });
    }
    if let Some(v) =
        set.views.iter().find(|v| has(v, &["event_type", "brand"]) && v.metric_names.iter().any(|m| m == "sum_price"))
    {
        let base = ident(&view_name(&v.name, Granularity::Day));
        let purchases = if v.metric_names.iter().any(|m| m == "count") { "sum(\"count\")" } else { "NULL" };
        out.push(SqlView {
            name: REVENUE_VIEW.to_owned(),
            select: format!(
                "SELECT bucket_start, brand, sum(\"sum_price\") AS revenue, {purchases} AS purchases\n\
                 FROM {base} WHERE event_type = 'purchase' GROUP BY bucket_start, brand"
            ),
        });
    }
    out
}

/// `v_freshness`: one row with the current manifest's `generation` and when its batch run finished
/// (`batch_finished_at`, UTC; both NULL before the first publish), and the latest bucket the merged views
/// hold (`latest_bucket`, UTC, over every view and granularity): what a dashboard shows to tell how fresh
/// its numbers are.
fn freshness_select(dialect: Dialect) -> String {
    let (finished, latest) = match dialect {
        Dialect::Sqlite => ("datetime(json_extract(body, '$.finished_at'))", "datetime(max(b), 'unixepoch')"),
        Dialect::Postgres => {
            ("((body ->> 'finished_at')::timestamptz AT TIME ZONE 'UTC')", "(to_timestamp(max(b)) AT TIME ZONE 'UTC')")
        }
    };
    format!(
        "{}\
         SELECT (SELECT generation FROM manifest) AS generation,\n\
         \x20      (SELECT {finished} FROM manifest) AS batch_finished_at,\n\
         \x20      (SELECT {latest} FROM (\n\
         \x20           SELECT max(s.bucket_start) AS b FROM speed_rows s\n\
         \x20           LEFT JOIN cutoffs c ON c.kafka_partition = s.kafka_partition\n\
         \x20           WHERE s.segment_start >= coalesce(c.cutoff, 0)\n\
         \x20           UNION ALL\n\
         \x20           SELECT max(bucket_start) FROM batch_rows WHERE generation = (SELECT generation FROM manifest)\n\
         \x20      ) AS latest) AS latest_bucket",
        manifest_ctes(dialect).trim_end_matches(",\n").to_owned() + "\n"
    )
}

/// The `manifest` (the current one) and `cutoffs` (its C[p]) common table expressions, ending in `,\n`.
fn manifest_ctes(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "WITH manifest AS (SELECT generation, body FROM manifests ORDER BY generation DESC LIMIT 1),\n\
             cutoffs AS (SELECT CAST(c.key AS INTEGER) AS kafka_partition, c.value AS cutoff\n\
             \x20           FROM manifest, json_each(manifest.body, '$.cutoffs') AS c),\n"
        }
        Dialect::Postgres => {
            "WITH manifest AS (SELECT generation, body FROM manifests ORDER BY generation DESC LIMIT 1),\n\
             cutoffs AS (SELECT c.key::integer AS kafka_partition, c.value::bigint AS cutoff\n\
             \x20           FROM manifest, jsonb_each_text(manifest.body -> 'cutoffs') AS c),\n"
        }
    }
}

/// The statements that (re)create `views`: each dropped if it exists (the e-commerce views first, as they
/// read the others), then created, base views first. On PostgreSQL each view gets [`MARK`] as its comment.
fn statements(views: &[SqlView], dialect: Dialect) -> Vec<String> {
    let mut out: Vec<String> = views.iter().rev().map(|v| format!("DROP VIEW IF EXISTS {}", ident(&v.name))).collect();
    for v in views {
        out.push(format!("CREATE VIEW {} AS /* {MARK} */\n{}", ident(&v.name), v.select));
        if dialect == Dialect::Postgres {
            out.push(format!("COMMENT ON VIEW {} IS {}", ident(&v.name), literal(MARK)));
        }
    }
    out
}

/// The SQL script `lambda views sql` prints: idempotent, runnable by `sqlite3` or `psql` on the store (or
/// the PostgreSQL mirror), in one transaction.
///
/// Errors: as [`views`].
pub fn script(set: &ViewSet, dialect: Dialect) -> Result<String> {
    let views = views(set, dialect)?;
    let mut out = format!(
        "-- The merge rule of DESIGN.md §5 as SQL views ({}), generated by `lambda views sql`.\n\
         -- Apply with `lambda views install`, or by hand in one transaction.\nBEGIN;\n",
        match dialect {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
        }
    );
    for s in statements(&views, dialect) {
        out.push_str(&s);
        out.push_str(";\n");
    }
    out.push_str("COMMIT;\n");
    Ok(out)
}

/// Installs the views on the SQLite or PostgreSQL database at `url` in one transaction: drops every view an
/// earlier install made (found by [`MARK`]), then creates the current ones. Returns their names. Safe to
/// run again; run it after a change of the views config.
///
/// Errors: [`Error::ConfigInvalid`] naming `url` for a URL that is neither SQLite nor PostgreSQL (a
/// ScyllaDB store is read through its PostgreSQL mirror, `bi.url`); [`Error::Store`] when the database
/// refuses a statement (a view of your own that reads one of ours must be dropped first).
pub async fn install(url: &str, set: &ViewSet) -> Result<Vec<String>> {
    let dialect = Dialect::of_url(url).ok_or_else(|| {
        Error::invalid(
            "url",
            format!("`{url}`: SQL views install on a sqlite:// or postgres:// database (for a ScyllaDB store: bi.url)"),
        )
    })?;
    let views = views(set, dialect)?;
    let err = |source| Error::Store { table: "views", source };
    // the store makes its tables on open: views on a fresh database need them
    common::store::open(url).await?;
    match dialect {
        Dialect::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.map_err(err)?;
            let mut tx = conn.begin().await.map_err(err)?;
            let old: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'view' AND sql LIKE ?")
                    .bind(format!("%{MARK}%"))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(err)?;
            run_all::<sqlx::Sqlite>(&mut tx, &old, &views, dialect).await?;
            tx.commit().await.map_err(err)?;
        }
        Dialect::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.map_err(err)?;
            let mut tx = conn.begin().await.map_err(err)?;
            let old: Vec<String> = sqlx::query_scalar(
                "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'v' AND n.nspname = current_schema() AND obj_description(c.oid, 'pg_class') = $1",
            )
            .bind(MARK)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
            run_all::<sqlx::Postgres>(&mut tx, &old, &views, dialect).await?;
            tx.commit().await.map_err(err)?;
        }
    }
    Ok(views.into_iter().map(|v| v.name).collect())
}

/// Drops `old` (derived views first: retried until none is left, as one may read another) and runs the
/// statements of `views` on `conn`.
async fn run_all<DB>(conn: &mut DB::Connection, old: &[String], views: &[SqlView], dialect: Dialect) -> Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    let err = |source| Error::Store { table: "views", source };
    // the e-commerce views read the others; drop them first, then the rest
    let (derived, base): (Vec<&String>, Vec<&String>) =
        old.iter().partition(|n| [FUNNEL_VIEW, REVENUE_VIEW].contains(&n.as_str()));
    for name in derived.into_iter().chain(base) {
        sqlx::raw_sql(&format!("DROP VIEW IF EXISTS {}", ident(name))).execute(&mut *conn).await.map_err(err)?;
    }
    for statement in statements(views, dialect) {
        sqlx::raw_sql(&statement).execute(&mut *conn).await.map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::Config;

    #[test]
    fn every_view_and_granularity_gets_a_view_and_the_default_gets_the_ecommerce_ones() {
        let set = ViewSet::new(&Config::defaults());
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let names: Vec<String> = views(&set, dialect).unwrap().into_iter().map(|v| v.name).collect();
            for v in &set.views {
                for g in &v.granularities {
                    assert!(names.contains(&view_name(&v.name, *g)), "{names:?}");
                }
            }
            assert!(names.contains(&"v_funnel_by_category_day".to_owned()));
            assert!(names.contains(&"v_revenue_by_brand_day".to_owned()));
            assert_eq!(names[names.len() - 2], "v_revenue_by_brand_day", "derived views come last");
        }
    }

    #[test]
    fn a_clashing_column_is_refused_naming_the_view() {
        let config = Config::from_toml_str(
            "[[views]]\nname = \"odd\"\ndimensions = [\"event_type\"]\nmetrics = [\"count\"]\ngranularities = [\"day\"]\n",
        )
        .unwrap();
        let mut set = ViewSet::new(&config);
        set.views[0].dimensions[0] = "source".into();
        let e = views(&set, Dialect::Sqlite).unwrap_err().to_string();
        assert!(e.contains("odd") && e.contains("source"), "{e}");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!("postgres".parse::<Dialect>().unwrap(), Dialect::Postgres);
        assert!("mysql".parse::<Dialect>().is_err());
    }
}
