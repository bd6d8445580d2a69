"""The batch job in DuckDB: same cutoffs, dedup rule, views and granularities as `lambda batch export`.

Usage: duckdb_job.py CONFIG.toml ARCHIVE_ROOT CUTOFFS_JSON OUT_DIR [THREADS]
Prints one JSON line: {"engine": "duckdb", "compute_seconds": ..., "records": ...}.
"""
import json
import os
import sys
import time

import duckdb

import views


def main():
    config_path, root, cutoffs_json, out, threads = (sys.argv[1:] + ["2"])[:5]
    config, fields = views.load(config_path)
    cutoffs = {int(p): int(c) for p, c in json.loads(cutoffs_json).items()}
    topic = config["kafka"]["topic"]
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("CREATE TEMP TABLE cut (p INTEGER, c BIGINT)")
    con.executemany("INSERT INTO cut VALUES (?, ?)", list(cutoffs.items()))
    cols = ", ".join(f"r.{c}" for c in views.needed_columns(config, fields))
    glob = os.path.join(root, topic, "partition=*", "*.parquet")
    con.execute(
        f"""
        CREATE TEMP TABLE events AS
        WITH scanned AS (
            SELECT {cols} FROM read_parquet('{glob}', hive_partitioning = false) r
            JOIN cut ON r._partition = cut.p WHERE r._offset < cut.c
        ),
        records AS (
            SELECT * FROM scanned QUALIFY row_number() OVER (PARTITION BY _partition, _offset) = 1
        )
        SELECT * FROM records
        QUALIFY _dedup_key IS NULL
            OR row_number() OVER (PARTITION BY _dedup_key ORDER BY _timestamp NULLS LAST, _partition, _offset) = 1
        """
    )
    records = con.execute("SELECT count(*) FROM events").fetchone()[0]
    micros = lambda c: f"epoch_us({c})"
    for v in config["views"]:
        for g in v["granularities"]:
            sql = views.aggregate_sql(v, g, fields, config["schema"]["event_time"], micros).replace(" div ", " // ")
            sql = sql.replace("AS STRING", "AS VARCHAR")
            path = os.path.join(out, f"{v['name']}_{g}.parquet")
            con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    elapsed = time.perf_counter() - started
    print(json.dumps({"engine": "duckdb", "compute_seconds": elapsed, "events": records}))


if __name__ == "__main__":
    main()
