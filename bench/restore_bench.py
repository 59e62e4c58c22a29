#!/usr/bin/env python3
"""Restore benchmark: pgark against pgBackRest and a pg_basebackup tar.gz, side by side in one run.

1. Restore the same 1.5 GB database (pgbench -i -s 100) with `pgark restore`, `pgbackrest restore`
   (process-max=2) and by extracting a `pg_basebackup -Ft -z` archive with tar. Rounds interleaved.
2. Delta: after changing about 1% of the database (a contiguous 1% of pgbench_accounts) and taking
   new backups, `pgark restore --delta` onto the earlier (never started) pgark restore, against a
   full `pgark restore` of the new backup into an empty directory.
3. WAL: about 1 GB of WAL written after the new backups (md5 text rows, ~2x compressible) is
   fetched segment by segment through each tool's restore_command (`pgark wal-get`, `pgbackrest
   archive-get`), and replayed end to end by PostgreSQL started on each tool's restore.

Usage: python3 bench/restore_bench.py [--quick] [--scale 100] [--rounds 2]
Needs: PostgreSQL 15, pgbackrest, cargo build --release. Results go into BENCHMARKS.md between the
restore-bench markers.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_bench as bb  # noqa: E402
import wal_bench as wb  # noqa: E402

START = "<!-- restore-bench:start -->"
END = "<!-- restore-bench:end -->"


def pgark_cmd(conf, *args):
    return [wb.PGARK, args[0], "--config", conf, *args[1:]]


def owner_args():
    return ["--owner", "postgres"] if wb.IS_ROOT else []


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    if wb.IS_ROOT:
        wb.run(["chown", "postgres:postgres", path])


def make_wal(c, gigabytes):
    start = wb.lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
    c.psql("CREATE TABLE IF NOT EXISTS filler (id serial, t text)")
    while wb.lsn_int(c.psql("SELECT pg_current_wal_lsn()")) - start < gigabytes * (1 << 30):
        c.psql("INSERT INTO filler (t) SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 20000) g, generate_series(1, 32) h GROUP BY g")
    c.psql("SELECT pg_switch_wal()")
    end = c.psql("SELECT pg_current_wal_lsn()")
    return start, wb.lsn_int(end)


def wait_pgark_flushed(metrics, lsn, limit=600):
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            with urllib.request.urlopen(f"http://{metrics}/status", timeout=2) as r:
                s = json.load(r)["servers"][0]
                if s.get("flushed_lsn") and wb.lsn_int(s["flushed_lsn"]) >= lsn:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("pgark did not flush the WAL in time")


def wait_archived(c, limit=900):
    t0 = time.time()
    last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
    while time.time() - t0 < limit:
        done = c.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if done and done >= last[:24] or c.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'") == "0":
            return
        time.sleep(1)
    raise RuntimeError("pgBackRest did not archive the WAL in time")


def start_and_recover(base, name, data, limit=1800):
    """Starts PostgreSQL on a restored directory; returns seconds until recovery ended."""
    c = wb.Cluster(base, name)
    c.data = data
    port = wb.free_port()
    c.port = port
    with open(os.path.join(data, "postgresql.conf"), "a") as f:
        f.write(f"\nport = {port}\nunix_socket_directories = '{c.sock}'\narchive_mode = off\n")
    if wb.IS_ROOT:
        wb.run(["chown", "-R", "postgres:postgres", c.dir, data])
    t0 = time.monotonic()
    subprocess.run(wb.owner_cmd([f"{wb.BIN}/pg_ctl", "-D", data, "-l", os.path.join(c.dir, "log"), "start"]), check=True, capture_output=True)
    while time.monotonic() - t0 < limit:
        try:
            if c.psql("SELECT pg_is_in_recovery()") == "f":
                return time.monotonic() - t0, c
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name}: recovery did not finish; see {c.dir}/log")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wal-gb", type=float, default=1.0)
    ap.add_argument("--out", default=os.path.join(wb.ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.scale, args.rounds, args.wal_gb = 5, 1, 0.1
    base = tempfile.mkdtemp(prefix="pgark-rbench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        run(base, args)
    finally:
        wb.cleanup(base)


def run(base, args):
    c, size = bb.make_dataset(base, "pgbench", args.scale)
    rest = bb.PgBackRest(base, c)
    c.conf("max_wal_size = 8GB\n")
    c.stop()
    c.start()
    rest.setup()
    d, conf, serve = bb.pgark_setup(base, c)
    metrics = open(conf).read().split("listen: ")[1].split()[0]
    results = {"pgark": [], "pgbackrest": [], "tar_gz": []}
    try:
        # Backups of the same state.
        wb.run(pgark_cmd(conf, "backup", "bench", "--checkpoint", "fast"))
        wb.run(rest.cmd("--type=full", "backup"))
        tgz = os.path.join(base, "tgz")
        fresh_dir(tgz)
        wb.run([f"{wb.BIN}/pg_basebackup", "-h", c.sock, "-p", str(c.port), "-U", c.user, "-D", tgz, "-Ft", "-z", "-X", "fetch", "-c", "fast"])
        print("backups taken", flush=True)

        # 1. Restores, interleaved; the order rotates each round so no tool always goes first.
        tools = list(results)
        for r in range(args.rounds):
            for tool in tools[r % len(tools):] + tools[:r % len(tools)]:
                target = os.path.join(base, f"restore_{tool}")
                fresh_dir(target)
                subprocess.run(["sync"])  # start each tool with no one else's dirty data to flush
                if tool == "pgark":
                    secs, rss, cpu, _ = bb.timed(pgark_cmd(conf, "restore", "bench", "--target-dir", target, "--jobs", "2", *owner_args()))
                elif tool == "pgbackrest":
                    secs, rss, cpu, _ = bb.timed(rest.cmd(f"--pg1-path={target}", "--process-max=2", "restore"))
                else:
                    secs, rss, cpu, _ = bb.timed(["tar", "-xzf", os.path.join(tgz, "base.tar.gz"), "-C", target])
                results[tool].append({"seconds": secs, "mb_s": size / 1e6 / secs, "rss": rss, "cpu": cpu})
                print(f"restore round {r + 1} {tool:>10}: {secs:6.1f}s {size / 1e6 / secs:6.0f} MB/s rss {rss / 1e6:6.1f} MB cpu {cpu:5.1f}s", flush=True)

        # 2. Delta after ~1% change: each tool's restore of the first backup (never started)
        # updated in place to a new backup, against a full restore of that backup. pgark twice:
        # as it runs by default (files its last restore recorded and nobody touched since are
        # compared by their recorded chunks) and with --verify-existing (every file read and
        # checksummed, as pgBackRest's --delta does). The page cache is dropped before each run
        # (as root), so the old copies are read from the disk as an old copy would be.
        first_id = json.loads(wb.run(pgark_cmd(conf, "list-backups", "bench", "--json")).stdout)[-1]["id"]
        verify_target = os.path.join(base, "restore_pgark_verify")
        fresh_dir(verify_target)
        wb.run(pgark_cmd(conf, "restore", "bench", first_id, "--target-dir", verify_target, "--jobs", "2", *owner_args()))
        c.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= {args.scale * 1000}")
        c.psql("CHECKPOINT")
        wb.run(pgark_cmd(conf, "backup", "bench", "--checkpoint", "fast"))
        wb.run(rest.cmd("--type=full", "backup"))

        def cold():
            subprocess.run(["sync"])
            if wb.IS_ROOT:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")

        target = os.path.join(base, "restore_pgark")
        cold()
        secs_delta, _, _, out = bb.timed(pgark_cmd(conf, "restore", "bench", "--target-dir", target, "--delta", "--jobs", "2", "--json", *owner_args()))
        stats = json.loads(out)["stats"]
        cold()
        secs_verify, _, _, out = bb.timed(pgark_cmd(conf, "restore", "bench", "--target-dir", verify_target, "--delta", "--verify-existing", "--jobs", "2", "--json", *owner_args()))
        stats_verify = json.loads(out)["stats"]
        cold()
        secs_rest_delta = bb.timed(rest.cmd(f"--pg1-path={os.path.join(base, 'restore_pgbackrest')}", "--process-max=2", "--delta", "restore"))[0]
        full = os.path.join(base, "restore_full")
        fulls = []
        for _ in range(3):
            fresh_dir(full)
            cold()
            fulls.append(bb.timed(pgark_cmd(conf, "restore", "bench", "--target-dir", full, "--jobs", "2", *owner_args()))[0])
        secs_full = statistics.median(fulls)
        print(f"delta {secs_delta:.1f}s ({stats}), with --verify-existing {secs_verify:.1f}s ({stats_verify}), "
              f"pgbackrest --delta {secs_rest_delta:.1f}s, vs full {secs_full:.1f}s", flush=True)
        replay_rest = os.path.join(base, "restore_pgbackrest_b")
        fresh_dir(replay_rest)
        wb.run(rest.cmd(f"--pg1-path={replay_rest}", "--process-max=2", "restore"))

        # 3. WAL after the second backups, fetched and replayed through each restore_command.
        wal_start, wal_end = make_wal(c, args.wal_gb)
        wait_pgark_flushed(metrics, wal_end)
        wait_archived(c)
        print(f"WAL written: {(wal_end - wal_start) / 1e9:.2f} GB", flush=True)
        names = sorted({n.split(".")[0] for n in os.listdir(os.path.join(d, "catalog", "bench", "wal")) if len(n.split(".")[0]) == 24 and not n.endswith(".partial")})
        first = "%08X%08X%08X" % (1, wal_start >> 32, (wal_start & 0xFFFFFFFF) >> 24)
        names = [n for n in names if n[8:] >= first[8:]]
        spool = os.path.join(base, "fetch")
        fresh_dir(spool)
        fetch = {}
        for tool in ("pgark", "pgbackrest"):
            t0 = time.monotonic()
            for n in names:
                dest = os.path.join(spool, n)
                if tool == "pgark":
                    cmd = wb.owner_cmd(pgark_cmd(conf, "wal-get", "bench", n, dest))
                else:
                    cmd = rest.cmd("archive-get", n, dest)
                subprocess.run(cmd, check=True, capture_output=True)
                os.remove(dest)
            fetch[tool] = time.monotonic() - t0
            print(f"fetch {len(names)} segments via {tool}: {fetch[tool]:.1f}s", flush=True)
        if wb.IS_ROOT:
            wb.run(["chmod", "-R", "a+rX", d])
        replay = {}
        for tool, data in (("pgark", full), ("pgbackrest", replay_rest)):
            secs, cl = start_and_recover(base, f"pg_{tool}", data)
            replay[tool] = secs
            cl.stop()
            print(f"replay via {tool}: {secs:.1f}s", flush=True)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        c.stop()

    med = lambda tool, k: statistics.median(r[k] for r in results[tool])  # noqa: E731
    lines = [START, "", "## Restore", ""]
    w = lines.append
    w(f"Generated by `python3 bench/restore_bench.py --scale {args.scale} --rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}, "
      f"{os.cpu_count()} cores, PostgreSQL {wb.run([f'{wb.BIN}/postgres', '--version']).stdout.split()[2]}, "
      f"{wb.run(['pgbackrest', 'version']).stdout.strip()}; database {size / 1e9:.2f} GB (pgbench), medians.")
    w("")
    w("| restore | seconds | MB/s | speed vs pgBackRest | peak RSS MB | CPU s |")
    w("|---|---|---|---|---|---|")
    for tool, label in (("pgark", "pgark restore --jobs 2"), ("pgbackrest", "pgbackrest restore, process-max=2"), ("tar_gz", "tar -xzf of pg_basebackup -Ft -z")):
        w(f"| {label} | {med(tool, 'seconds'):.1f} | {med(tool, 'mb_s'):.0f} | {med('pgbackrest', 'seconds') / med(tool, 'seconds'):.2f} | "
          f"{med(tool, 'rss') / 1e6:.1f} | {med(tool, 'cpu'):.1f} |")
    w("")
    gb = (wal_end - wal_start) / 1e9
    w(f"WAL: {gb:.2f} GB ({len(names)} segments) written after the backups.")
    w("")
    w("| WAL through restore_command | pgark wal-get | pgbackrest archive-get | pgark speed vs pgBackRest |")
    w("|---|---|---|---|")
    w(f"| fetch every segment, one command per segment (s) | {fetch['pgark']:.1f} | {fetch['pgbackrest']:.1f} | {fetch['pgbackrest'] / fetch['pgark']:.2f} |")
    w(f"| PostgreSQL start to end of recovery (s) | {replay['pgark']:.1f} | {replay['pgbackrest']:.1f} | {replay['pgbackrest'] / replay['pgark']:.2f} |")
    w("")
    w(f"Delta restore after updating {args.scale * 1000} of {args.scale * 100000} pgbench_accounts rows (1%) and a new backup, "
      f"onto each tool's restore of the first backup, page cache dropped; a full pgark restore of the new backup takes {secs_full:.1f}s:")
    w("")
    w("| delta restore | seconds | share of a full pgark restore | files rewritten | files unchanged (of them, vouched for by the record) |")
    w("|---|---|---|---|---|")
    w(f"| pgark --delta | {secs_delta:.2f} | {100 * secs_delta / secs_full:.0f}% | {stats['files_written']} | "
      f"{stats['files_unchanged']} ({stats['files_trusted']}) |")
    w(f"| pgark --delta --verify-existing (reads every file) | {secs_verify:.2f} | {100 * secs_verify / secs_full:.0f}% | "
      f"{stats_verify['files_written']} | {stats_verify['files_unchanged']} (0) |")
    w(f"| pgbackrest restore --delta, process-max=2 | {secs_rest_delta:.2f} | {100 * secs_rest_delta / secs_full:.0f}% | | |")
    w("")
    w("Targets (issue 4): restore >= 1.5x pgBackRest's speed; WAL replay through pgark wal-get at least as fast as pgBackRest's "
      "archive-get; a delta restore after a 1% change under 20% of a full restore.")
    w("")
    w(END)
    section = "\n".join(lines)
    print(section)
    if not args.quick:
        text = open(args.out).read() if os.path.exists(args.out) else "# Benchmarks\n"
        if START in text and END in text:
            head, rest_ = text.split(START, 1)
            text = head + section + rest_.split(END, 1)[1]
        else:
            text += "\n" + section + "\n"
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
