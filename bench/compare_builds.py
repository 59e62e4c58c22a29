#!/usr/bin/env python3
"""Two pgark builds side by side in one run: WAL ingest (catch-up after an outage), a base backup
and a restore, each measured for both builds in alternating order; medians and new/old ratios.

For checking that a change (a refactor) costs nothing: the machine is noisy, so only the ratio
within this run means anything.

Usage: python3 bench/compare_builds.py OLD_BIN NEW_BIN [--gigabytes 1] [--scale 50] [--rounds 3]
       [--out BENCHMARKS.md]   (appends or replaces the "Build comparison" section)
       [--new-top FILE --section TITLE] [--commit-seconds 15]

With --commit-seconds, each variant is also the synchronous standby of a primary running
pgbench -N with one client (commit latency: lower is better).

With --new-top, NEW runs with FILE's top-level YAML added to its config (say an `encryption:`
section): one build, two configs. Each variant then has its own daemon and catalog for the
backups and restores, and the ingest waits until the last segment is archived (compressed and
stored), not only received.

Needs what bench/wal_bench.py and bench/backup_bench.py need (PostgreSQL, pgbench; runs as root
with servers as the postgres user, or as an ordinary user).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_bench as bb  # noqa: E402
import wal_bench as wb  # noqa: E402

SECTION = "## Build comparison"


def alternate(bins, rounds, tops):
    """(round, variant) pairs, the order of the variants reversed every other round, with
    wal_bench set up to run that variant (its binary and top-level YAML)."""
    for i in range(rounds):
        order = list(bins) if i % 2 == 0 else list(reversed(list(bins)))
        for name in order:
            wb.PGARK = bins[name]
            wb.EXTRA_TOP = (tops or {}).get(name, "")
            yield i, name


def ingest(base, bins, gigabytes, rounds, tops=None, archived=False):
    """Each build catches up on its own slot's retained WAL, alternating; seconds to durable."""
    primary = wb.Cluster(base, "ingest")
    primary.initdb("shared_buffers = 256MB\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\nsynchronous_commit = off\nwal_keep_size = 0\nautovacuum = off\nmax_replication_slots = 64\n")
    primary.start()
    for name in bins:
        for i in range(rounds):
            primary.psql(f"SELECT pg_create_physical_replication_slot('cmp_{name}_{i}', true)")
    start = wb.lsn_int(primary.psql("SELECT pg_current_wal_lsn()"))
    primary.psql("CREATE TABLE ingest (id bigint, t text)")
    while wb.lsn_int(primary.psql("SELECT pg_current_wal_lsn()")) < start + int(gigabytes * (1 << 30)):
        primary.psql("INSERT INTO ingest SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) FROM generate_series(1, 400000) g")
    primary.psql("SELECT pg_switch_wal()")
    end = wb.lsn_int(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    segno = (end - 1) // (16 << 20)
    last = "%08X%08X%08X" % (1, segno // 256, segno % 256)
    results = {name: [] for name in bins}
    for i, name in alternate(bins, rounds, tops):
        t0 = time.time()
        rec = wb.Pgark(base, primary, f"cmp_{name}_{i}", synchronous=True, compression="zstd")
        while not rec.has_segment(last, archived):
            if rec.proc.poll() is not None:
                raise RuntimeError(f"{name} exited early")
            time.sleep(0.05)
        secs = time.time() - t0
        rec.stop()
        results[name].append((end - start) / 1e6 / secs)
        print(f"ingest round {i + 1} {name}: {secs:.1f}s {(end - start) / 1e6 / secs:.0f} MB/s", flush=True)
    primary.stop()
    return results, end - start


def commit_latency(base, bins, rounds, tops, seconds):
    """Synchronous commit latency with each variant as the synchronous standby: pgbench -N with
    one client, alternating; milliseconds per commit (lower is better)."""
    primary = wb.Cluster(base, "commit")
    primary.initdb("shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = on\nwal_keep_size = 0\nmax_replication_slots = 16\n")
    primary.start()
    wb.run([f"{wb.BIN}/pgbench", "-i", "-s", "10", "-q", "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "postgres"])
    for name in bins:
        primary.psql(f"SELECT pg_create_physical_replication_slot('cmpc_{name}', true)")
    results = {name: [] for name in bins}
    for i, name in alternate(bins, rounds, tops):
        rec = wb.Pgark(base, primary, f"cmpc_{name}")
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'pgark'")
        primary.psql("SELECT pg_reload_conf()")
        wb.wait_sync(primary, "pgark")
        _, lat = wb.pgbench(primary, 1, seconds)
        results[name].append(lat)
        print(f"commit round {i + 1} {name}: {lat:.3f} ms", flush=True)
        primary.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        primary.psql("SELECT pg_reload_conf()")
        rec.stop()
    primary.stop()
    return results


def backup_and_restore(base, bins, scale, rounds, tops=None):
    """Backups (after deleting the previous, so nothing is deduplicated) and restores of the
    same state, alternating builds. The daemon that streams is the new build throughout; with
    `tops`, each variant has a daemon and catalog of its own, configured so."""
    c, size = bb.make_dataset(base, "pgbench", scale)
    wb.PGARK = bins["new"]
    if tops:
        setups = {name: bb.pgark_setup(base, c, f"pgark_{name}", f"pgark_{name}", tops.get(name, "")) for name in bins}
    else:
        one = bb.pgark_setup(base, c)
        setups = {name: one for name in bins}
    backups = {name: [] for name in bins}
    restores = {name: [] for name in bins}
    try:
        for r in range(rounds):
            order = list(bins) if r % 2 == 0 else list(reversed(list(bins)))
            for name in order:
                wb.PGARK = bins[name]
                conf = setups[name][1]
                bb.pgark_delete_all(conf)
                secs, _, _, _ = bb.pgark_backup(conf)
                backups[name].append(size / 1e6 / secs)
                print(f"backup round {r + 1} {name}: {secs:.1f}s {size / 1e6 / secs:.0f} MB/s", flush=True)
            for name in order:
                wb.PGARK = bins[name]
                conf = setups[name][1]
                target = os.path.join(base, f"restore_{name}")
                shutil.rmtree(target, ignore_errors=True)
                os.makedirs(target)
                if wb.IS_ROOT:
                    wb.run(["chown", "postgres:postgres", target])
                owner = ["--owner", "postgres"] if wb.IS_ROOT else []
                secs, _, _, _ = bb.timed([wb.PGARK, "restore", "--config", conf, "bench", "--target-dir", target, "--jobs", "2", *owner])
                shutil.rmtree(target, ignore_errors=True)
                restores[name].append(size / 1e6 / secs)
                print(f"restore round {r + 1} {name}: {secs:.1f}s {size / 1e6 / secs:.0f} MB/s", flush=True)
    finally:
        for serve in {id(x[2]): x[2] for x in setups.values()}.values():
            serve.terminate()
            serve.wait(timeout=60)
        c.stop()
    return backups, restores, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--gigabytes", type=float, default=1.0)
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--new-top", help="file of top-level YAML for NEW's config (one build, two configs)")
    ap.add_argument("--section", default=SECTION, help="the BENCHMARKS.md section written (with --new-top)")
    ap.add_argument("--commit-seconds", type=int, default=0,
                    help="also measure synchronous commit latency (pgbench -N, 1 client) for this many seconds per round")
    args = ap.parse_args()
    tops = {"old": "", "new": open(args.new_top).read()} if args.new_top else None
    bins = {"old": os.path.abspath(args.old), "new": os.path.abspath(args.new)}
    for b in bins.values():
        if not os.path.exists(b):
            sys.exit(f"{b} is missing")
    base = tempfile.mkdtemp(prefix="pgark-cmp-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        ing, wal = ingest(base, bins, args.gigabytes, args.rounds, tops, archived=tops is not None)
        bk, rs, size = backup_and_restore(base, bins, args.scale, args.rounds, tops)
        commits = commit_latency(base, bins, args.rounds, tops, args.commit_seconds) if args.commit_seconds else None
    finally:
        wb.cleanup(base)
    section = args.section if tops else SECTION
    ingest_label = "WAL ingest to archived (catch-up), MB/s" if tops else "WAL ingest (catch-up), MB/s"
    rows = [(ingest_label, ing), ("base backup, MB/s", bk), ("restore (2 jobs), MB/s", rs)]
    if commits:
        rows.append((f"synchronous commit latency (pgbench -N, 1 client, {args.commit_seconds} s), ms; lower is better", commits))
    more = f" --commit-seconds {args.commit_seconds}" if args.commit_seconds else ""
    command = f"`python3 bench/compare_builds.py OLD NEW --gigabytes {args.gigabytes} --scale {args.scale} --rounds {args.rounds}{more}`"
    what = "alternating the builds"
    if tops:
        command = (f"`python3 bench/compare_builds.py BIN BIN --new-top TOP --gigabytes {args.gigabytes} --scale {args.scale} "
                   f"--rounds {args.rounds}{more}`")
        what = "alternating the configs; old: no top-level additions, new: TOP = " + " ".join(
            f"`{line.strip()}`" for line in tops["new"].splitlines() if line.strip() and "key_file" not in line)
    lines = [
        section,
        "",
        f"{command} on {time.strftime('%Y-%m-%d')}: {wal / (1 << 30):.2f} GiB of WAL, a {size / 1e9:.2f} GB pgbench database, "
        f"{args.rounds} rounds {what}; medians. Only the ratio means anything on this noisy machine.",
        "",
        "| operation | old | new | new / old |",
        "|---|---|---|---|",
    ]
    for label, res in rows:
        o, n = statistics.median(res["old"]), statistics.median(res["new"])
        digits = 3 if o < 10 else 0
        lines.append(f"| {label} | {o:.{digits}f} | {n:.{digits}f} | {n / o:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        old = open(args.out).read() if os.path.exists(args.out) else ""
        if section in old:
            head, rest = old.split(section, 1)
            nxt = rest.find("\n## ")
            old = head + (rest[nxt + 1:] if nxt >= 0 else "")
        with open(args.out, "w") as f:
            f.write(old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    main()
