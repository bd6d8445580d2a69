"""Checks that engines produced identical aggregates: same tables, same rows (as multisets), same values.

Usage: compare.py CONFIG.toml DIR_A DIR_B [DIR_C ...]   (exit status 1 on any difference)
Each DIR holds <view>_<granularity>.parquet files or Spark output directories of that name.
"""
import os
import sys

import duckdb

import views


def source(d, table):
    path = os.path.join(d, table)
    if os.path.isdir(path):
        return f"read_parquet('{path}/*.parquet')"
    return f"read_parquet('{path}.parquet')"


def main():
    config, _ = views.load(sys.argv[1])
    dirs = sys.argv[2:]
    con = duckdb.connect()
    failures = 0
    total = 0
    for v in config["views"]:
        cols = ", ".join(["bucket_start"] + v["dimensions"] + [m.replace(":", "_") for m in v["metrics"]])
        for g in v["granularities"]:
            table = f"{v['name']}_{g}"
            base = f"SELECT {cols} FROM {source(dirs[0], table)}"
            n = con.execute(f"SELECT count(*) FROM ({base})").fetchone()[0]
            total += n
            for other in dirs[1:]:
                theirs = f"SELECT {cols} FROM {source(other, table)}"
                missing = con.execute(f"SELECT count(*) FROM ({base} EXCEPT ALL {theirs})").fetchone()[0]
                extra = con.execute(f"SELECT count(*) FROM ({theirs} EXCEPT ALL {base})").fetchone()[0]
                if missing or extra:
                    failures += 1
                    print(f"DIFFERENT {table}: {dirs[0]} has {missing} rows {other} lacks; {other} has {extra} extra")
            if n == 0:
                failures += 1
                print(f"EMPTY {table} in {dirs[0]}: an empty comparison proves nothing")
    if failures:
        sys.exit(1)
    print(f"identical: {len(dirs)} engines, {total} rows in {sum(len(v['granularities']) for v in config['views'])} tables")


if __name__ == "__main__":
    main()
