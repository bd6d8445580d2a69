"""The views, fields and semantics shared by the DuckDB and Spark batch jobs, read from `lambda config show`.

The rule they implement is DESIGN.md §5 as `batch_layer::job::compute` does it:
  1. keep archive records with `_offset < cutoff[_partition]` (partitions without a cutoff are left out);
  2. keep one record per (`_partition`, `_offset`) (files may overlap after a crash);
  3. keep one record per `_dedup_key`: earliest `_timestamp` (nulls last), then lowest partition, then offset;
     a record whose `_dedup_key` is null has no key and is always kept (never merged with another);
  4. per view x granularity, group by bucket_start = floor(event_time_us / (step * 1e6)) * step seconds and
     the dimensions (empty strings -> NULL, integers -> text); count(*) and the exact sum of each
     `sum:<field>` metric as DECIMAL(38, 6): `f64` fields are archived as DECIMAL(22, 6) (exact, already
     rounded by the decoder), `i64` fields are summed as integers.
"""
import tomllib

STEPS = {"minute": 60, "hour": 3600, "day": 86400}


def load(config_path):
    with open(config_path, "rb") as f:
        config = tomllib.load(f)
    fields = {f["name"]: f["type"] for f in config["schema"]["fields"]}
    return config, fields


def needed_columns(config, fields):
    cols = ["_partition", "_offset", "_timestamp", "_dedup_key", config["schema"]["event_time"]]
    for v in config["views"]:
        cols += v["dimensions"]
        cols += [m.split(":", 1)[1] for m in v["metrics"] if m.startswith("sum:")]
    seen = []
    for c in cols:
        if c not in seen:
            seen.append(c)
    return seen


def aggregate_sql(view, granularity, fields, event_time, micros_expr, table="events"):
    """The SELECT for one table. `micros_expr(col)` is the engine's Unix-microseconds expression."""
    step = STEPS[granularity]
    select = [f"({micros_expr(event_time)} div {step * 1_000_000}) * {step} AS bucket_start"]
    for d in view["dimensions"]:
        if fields[d] == "i64":
            select.append(f"CAST({d} AS STRING) AS {d}")
        else:
            select.append(f"CASE WHEN {d} = '' THEN NULL ELSE {d} END AS {d}")
    for m in view["metrics"]:
        if m == "count":
            select.append("count(*) AS count")
            continue
        field = m.split(":", 1)[1]
        value = f"CAST({field} AS DECIMAL(38, 0))" if fields[field] == "i64" else field
        select.append(f"CAST(COALESCE(SUM({value}), 0) AS DECIMAL(38, 6)) AS sum_{field}")
    groups = ", ".join(str(i + 1) for i in range(1 + len(view["dimensions"])))
    return f"SELECT {', '.join(select)} FROM {table} GROUP BY {groups}"
