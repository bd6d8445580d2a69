"""Batch benchmark: `lambda batch export` vs the same job in DuckDB and Spark on one archive.

Usage: run.py --lambda BIN --archive ROOT --work DIR [--runs 3] [--engines lambda,duckdb,spark] [--json OUT]

Each round runs every engine once, in turn, on the same cutoffs (95% of each partition's log end, so the
cutoff filter matters), each starting with the archive read once into the page cache. Wall time is the
whole process (start-up included); peak memory is the largest sum of RSS over the engine's process tree,
sampled every 20 ms with psutil. After the first round the outputs
are compared (compare.py) and the benchmark stops if they differ. Ratios are taken per round against the
baseline engine (DuckDB) of the same round, then summarised as min/median/max.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))


def tree_rss(proc):
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(cmd, env=None):
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"{cmd[0]} failed with exit status {proc.returncode}")
    return wall, peak, out


def warm(root):
    """Reads every archive file so each engine starts with the archive in the page cache: otherwise the
    engine that runs after Spark (whose shuffle files evict it) reads from disk and the others do not."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def cutoffs_of(root, topic):
    ends = {}
    for d in os.listdir(os.path.join(root, topic)):
        m = re.fullmatch(r"partition=(\d+)", d)
        if not m:
            continue
        for f in os.listdir(os.path.join(root, topic, d)):
            n = re.fullmatch(r"(\d{20})-(\d{20})\.parquet", f)
            if n:
                p = int(m.group(1))
                ends[p] = max(ends.get(p, 0), int(n.group(2)))
    return {p: e - e // 20 for p, e in sorted(ends.items())}


def summary(xs):
    return min(xs), statistics.median(xs), max(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambda", dest="lambda_bin", required=True)
    ap.add_argument("--archive", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--engines", default="lambda,duckdb,spark")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    engines = args.engines.split(",")
    os.makedirs(args.work, exist_ok=True)

    env = dict(os.environ, LAMBDA__ARCHIVE__ROOT=os.path.abspath(args.archive))
    config_path = os.path.join(args.work, "config.toml")
    with open(config_path, "w") as f:
        f.write(subprocess.run([args.lambda_bin, "config", "show"], env=env, check=True, capture_output=True, text=True).stdout)
    import views

    config, _ = views.load(config_path)
    cutoffs = cutoffs_of(args.archive, config["kafka"]["topic"])
    records = sum(cutoffs.values())
    print(f"archive {args.archive}: cutoffs {cutoffs} ({records} records below them)", flush=True)

    def command(engine, out):
        if engine == "lambda":
            cut = [a for p, c in cutoffs.items() for a in ("--cutoff", f"{p}={c}")]
            return [args.lambda_bin, "--log", "warn", "batch", "export", "--out", out] + cut
        script = {"duckdb": "duckdb_job.py", "spark": "spark_job.py"}[engine]
        return [sys.executable, os.path.join(HERE, script), config_path, args.archive, json.dumps(cutoffs), out, str(args.threads)]

    results = {e: [] for e in engines}
    for r in range(args.runs):
        for engine in engines:
            out = os.path.join(args.work, f"out-{engine}")
            shutil.rmtree(out, ignore_errors=True)
            warm(args.archive)
            wall, peak, stdout = measure(command(engine, out), env)
            report = json.loads(stdout.strip().splitlines()[-1] if engine != "lambda" else stdout)
            inner = report.get("compute_seconds", 0) + report.get("write_seconds", 0)
            results[engine].append({"wall": wall, "peak_rss": peak, "inner": inner, "report": report})
            print(f"round {r + 1} {engine:7s} wall {wall:7.2f} s  in-engine {inner:7.2f} s  peak {peak / 2**30:6.2f} GiB", flush=True)
        if r == 0 and len(engines) > 1:
            dirs = [os.path.join(args.work, f"out-{e}") for e in engines]
            subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), config_path] + dirs, check=True)
            # keep the first round's outputs for inspection
            for d in dirs:
                shutil.rmtree(d + "-round1", ignore_errors=True)
                shutil.copytree(d, d + "-round1")

    base = "duckdb" if "duckdb" in engines else engines[0]
    rows = []
    print()
    print(f"| engine | wall s (min / median / max) | rows/s (median) | in-engine s (median) | peak RSS GiB (max) | wall vs {base} (min / median / max) |")
    print("|---|---|---|---|---|---|")
    for e in engines:
        walls = [x["wall"] for x in results[e]]
        ratios = [x["wall"] / b["wall"] for x, b in zip(results[e], results[base])]
        w, r = summary(walls), summary(ratios)
        peak = max(x["peak_rss"] for x in results[e]) / 2**30
        inner = statistics.median(x["inner"] for x in results[e])
        print(f"| {e} | {w[0]:.2f} / {w[1]:.2f} / {w[2]:.2f} | {records / w[1] / 1e6:.2f} M | {inner:.2f} | {peak:.2f} | {r[0]:.2f} / {r[1]:.2f} / {r[2]:.2f} |")
        rows.append({"engine": e, "wall": walls, "ratio_vs_" + base: ratios, "peak_rss_gib": peak, "records": records})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"archive": args.archive, "cutoffs": cutoffs, "runs": args.runs, "engines": rows, "raw": results}, f, indent=1)


if __name__ == "__main__":
    main()
