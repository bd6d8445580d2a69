"""The batch job in Spark (local[N]): same cutoffs, dedup rule, views and granularities as `lambda batch export`.

Usage: spark_job.py CONFIG.toml ARCHIVE_ROOT CUTOFFS_JSON OUT_DIR [CORES]
Writes OUT_DIR/<view>_<granularity>/ (a Spark output directory of Parquet parts) and prints one JSON line:
{"engine": "spark", "compute_seconds": ... (after the session is up), "session_seconds": ...}.
"""
import json
import os
import sys
import time

from pyspark.sql import SparkSession

import views


def main():
    config_path, root, cutoffs_json, out, cores = (sys.argv[1:] + ["2"])[:5]
    config, fields = views.load(config_path)
    cutoffs = {int(p): int(c) for p, c in json.loads(cutoffs_json).items()}
    topic = config["kafka"]["topic"]
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{int(cores)}]")
        .appName("lambda-batch-bench")
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "12g"))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(4 * int(cores)))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    session_seconds = time.perf_counter() - started
    clock = time.perf_counter()
    df = (
        spark.read.option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
        .parquet(os.path.join(root, topic))
        .select(*views.needed_columns(config, fields))
    )
    df.createOrReplaceTempView("archive")
    spark.createDataFrame(list(cutoffs.items()), "p INT, c BIGINT").createOrReplaceTempView("cut")
    events = spark.sql(
        """
        WITH scanned AS (
            SELECT r.* FROM archive r JOIN cut ON r._partition = cut.p WHERE r._offset < cut.c
        ),
        records AS (
            SELECT * FROM (
                SELECT *, row_number() OVER (PARTITION BY _partition, _offset ORDER BY _offset) AS __r FROM scanned
            ) WHERE __r = 1
        )
        SELECT * FROM (
            SELECT *, row_number() OVER (
                PARTITION BY _dedup_key ORDER BY _timestamp ASC NULLS LAST, _partition, _offset
            ) AS __k FROM records
        ) WHERE _dedup_key IS NULL OR __k = 1
        """
    ).drop("__r", "__k")
    events.cache()
    n = events.count()
    events.createOrReplaceTempView("events")
    micros = lambda c: f"unix_micros({c})"
    for v in config["views"]:
        for g in v["granularities"]:
            sql = views.aggregate_sql(v, g, fields, config["schema"]["event_time"], micros)
            spark.sql(sql).coalesce(1).write.mode("overwrite").parquet(os.path.join(out, f"{v['name']}_{g}"))
    compute_seconds = time.perf_counter() - clock
    spark.stop()
    print(json.dumps({"engine": "spark", "compute_seconds": compute_seconds, "session_seconds": session_seconds, "events": n}))


if __name__ == "__main__":
    main()
