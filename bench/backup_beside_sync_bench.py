#!/usr/bin/env python3
"""What a base backup costs the commits of a server that waits for pgark: two builds side by side.

A primary names pgark in synchronous_standby_names, so each of its commits waits for pgark's
fdatasync. pgbench -N with one client commits on it throughout; in the middle, `pgark backup`
takes a full backup of a database whose chunks compress only about 2x (hex digests), so the
catalog writes hundreds of MB of chunk files while the commits wait for their fdatasyncs. Per
build, alternating: the commit latency (p50, p99) alone and during the backup, from pgbench's
per-transaction log, and the backup's duration. Medians of the rounds.

It measures `fsio::write_behind` end to end (the catalog's page-cache writes going to the disk
in 256 KiB pieces as they are written, instead of all at each chunk's fsync). With --rates, one
build runs once per rate instead (`pgark backup --max-rate`, as `backup_max_rate` sets it for
scheduled backups): what a rate limit buys the commits, and what it costs the backup.

Usage: python3 bench/backup_beside_sync_bench.py OLD_BIN NEW_BIN [--rows 6000000] [--rounds 3] [--out BENCHMARKS.md]
       python3 bench/backup_beside_sync_bench.py BIN --rates unlimited,100MB,40MB [--out BENCHMARKS.md]
Needs what bench/wal_bench.py needs (PostgreSQL, pgbench; as root, servers run as postgres).
"""

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_builds as cb  # noqa: E402
from sync_interference_bench import write_section  # noqa: E402
import wal_bench as wb  # noqa: E402

SECTION = "## What a backup costs a synchronous server's commits"
RATES_SECTION = "## What backup_max_rate buys a synchronous server's commits"


def percentiles(lat):
    lat = sorted(lat)
    if not lat:
        return {0.5: float("nan"), 0.99: float("nan")}
    return {q: lat[min(len(lat) - 1, int(len(lat) * q))] for q in (0.5, 0.99)}


def commits(logdir):
    """(completion time in seconds since the epoch, latency in ms) of every logged commit."""
    out = []
    for path in glob.glob(os.path.join(logdir, "pgbench_log.*")):
        for line in open(path):
            f = line.split()
            if len(f) >= 6:
                out.append((int(f[4]) + int(f[5]) / 1e6, int(f[2]) / 1e3))
    return out


def one_round(base, primary, name, slot, seconds, lead, backup_args=()):
    rec = wb.Pgark(base, primary, slot)
    try:
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'pgark'")
        primary.psql("SELECT pg_reload_conf()")
        wb.wait_sync(primary, "pgark")
        logdir = tempfile.mkdtemp(prefix="pgbench-log-", dir=base)
        os.chmod(logdir, 0o777)
        bench = subprocess.Popen(
            [f"{wb.BIN}/pgbench", "-n", "-N", "-c", "1", "-j", "1", "-T", str(seconds), "-l",
             "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "postgres"],
            cwd=logdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(lead)
        t0 = time.time()
        b = subprocess.run([wb.PGARK, "backup", "--config", rec.config, "bench", "--checkpoint", "fast", *backup_args],
                           capture_output=True, text=True, env={**os.environ, "PGARK_LOG": "warn"})
        t1 = time.time()
        if b.returncode != 0:
            raise RuntimeError(f"{name}: backup failed: {b.stderr[-2000:]}")
        bench.wait()
        log = commits(logdir)
        alone = [ms for t, ms in log if t < t0 - 0.5 or t > t1 + 2.0]
        during = [ms for t, ms in log if t0 <= t <= t1]
        if t1 > t0 + seconds - lead - 2:
            print(f"warning: the backup ({t1 - t0:.1f} s) outlasted pgbench; raise --seconds", flush=True)
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        primary.psql("SELECT pg_reload_conf()")
        return percentiles(alone), percentiles(during), t1 - t0, len(during)
    finally:
        rec.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bins", nargs="+", metavar="BIN", help="OLD NEW, or one build with --rates")
    ap.add_argument("--rates", help="one build, once per rate: e.g. unlimited,100MB,40MB")
    ap.add_argument("--rows", type=int, default=6_000_000, help="rows of 96 hex characters (6M: about 0.9 GB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=30, help="pgbench's run per round; the backup starts after 6 s")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.rates:
        if len(args.bins) != 1:
            ap.error("--rates takes one build")
        rates = [r.strip() for r in args.rates.split(",") if r.strip()]
        bins = {rate_label(r): args.bins[0] for r in rates}
        backup_args = {rate_label(r): ([] if r == "unlimited" else ["--max-rate", r]) for r in rates}
    elif len(args.bins) == 2:
        bins = {"old": args.bins[0], "new": args.bins[1]}
        backup_args = {}
    else:
        ap.error("give OLD NEW, or one build with --rates")
    base = tempfile.mkdtemp(prefix="pgark-besidesync-", dir=os.environ.get("PGARK_BENCH_DIR", "/var/tmp"))
    os.chmod(base, 0o755)
    primary = wb.Cluster(base, "primary")
    results = {n: [] for n in bins}
    try:
        primary.initdb("shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = on\nwal_keep_size = 0\nmax_replication_slots = 16\n")
        primary.start()
        wb.run([f"{wb.BIN}/pgbench", "-i", "-s", "10", "-q", "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "postgres"])
        primary.psql(f"CREATE TABLE noise AS SELECT md5(g::text) || md5(random()::text) || md5(random()::text) AS h FROM generate_series(1, {args.rows}) g")
        primary.psql("VACUUM")
        primary.psql("CHECKPOINT")
        for n in bins:
            primary.psql(f"SELECT pg_create_physical_replication_slot('{slot_of(n)}', true)")
        for i, name in cb.alternate(bins, args.rounds, None):
            alone, during, secs, n = one_round(base, primary, name, slot_of(name), args.seconds, 6, backup_args.get(name, ()))
            results[name].append((alone, during, secs))
            print(f"round {i + 1} {name}: backup {secs:.1f} s; commit p50 {alone[0.5]:.3f} -> {during[0.5]:.3f} ms, "
                  f"p99 {alone[0.99]:.3f} -> {during[0.99]:.3f} ms ({n} commits during)", flush=True)
    finally:
        primary.stop()
        shutil.rmtree(base, ignore_errors=True)
    text = report(results, args)
    print(text)
    if args.out:
        write_section(args.out, text, RATES_SECTION if args.rates else SECTION)


def rate_label(rate):
    return "unlimited" if rate == "unlimited" else f"max-rate {rate}"


def slot_of(name):
    return "bs_" + "".join(ch if ch.isalnum() else "_" for ch in name.lower())


def report(results, args):
    med = {}
    for name, rs in results.items():
        med[name] = {
            "alone50": statistics.median(r[0][0.5] for r in rs),
            "alone99": statistics.median(r[0][0.99] for r in rs),
            "during50": statistics.median(r[1][0.5] for r in rs),
            "during99": statistics.median(r[1][0.99] for r in rs),
            "secs": statistics.median(r[2] for r in rs),
        }
    what = f"BIN --rates {args.rates}" if args.rates else "OLD NEW"
    lines = [
        RATES_SECTION if args.rates else SECTION,
        "",
        f"`python3 bench/backup_beside_sync_bench.py {what} --rows {args.rows} --rounds {args.rounds}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: a primary waiting for pgark at every commit "
        "(pgbench -N, 1 client) while `pgark backup` takes a full backup of a database whose chunks compress "
        "about 2x. Commit latency from pgbench's per-transaction log, outside and during the backup; medians "
        f"of the rounds, the {'rates' if args.rates else 'builds'} alternating. Rounds (p99 during, ms): "
        + "; ".join(f"{n} " + ", ".join(f"{r[1][0.99]:.2f}" for r in rs) for n, rs in results.items())
        + ".",
        "",
        f"| {'rate' if args.rates else 'build'} | backup s | commit p50 alone ms | p50 during | p99 alone ms | p99 during | p99 during / alone |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in med.items():
        lines.append(
            f"| {name} | {m['secs']:.1f} | {m['alone50']:.3f} | {m['during50']:.3f} | {m['alone99']:.3f} | "
            f"{m['during99']:.3f} | {m['during99'] / m['alone99']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
