#!/usr/bin/env python3
"""Base backup benchmark: pgark against pg_basebackup and pgBackRest, side by side in one run.

For each data set (pgbench -i -s 100, whose filler compresses about 22x, and rows of text that
compress about 3x), each tool backs up the same idle cluster, interleaved round by round:

  pg_basebackup_tar    pg_basebackup -Ft -X none (no compression)
  pg_basebackup_zstd   pg_basebackup -Ft -X none --compress=client-zstd (level 3)
  pgbackrest           pgbackrest backup --type=full --compress-type=zst --process-max=2 --start-fast
  pgark                pgark backup --checkpoint fast (zstd level 3, 2 workers), with pgark serve
                       streaming the WAL into the same catalog, as in production

WAL is not counted for any tool (pg_basebackup -X none; pgBackRest's archive and pgark's WAL
directory are left out): each keeps it separately for point-in-time recovery.
Reported: median seconds, MB/s (of the data directory size), stored bytes, peak RSS, CPU seconds,
and pgark's second backup of the unchanged database as a fraction of its first.

Usage: python3 bench/backup_bench.py [--quick] [--scale 100] [--rounds 3] [--out BENCHMARKS.md]
Needs: PostgreSQL 15 (server, pgbench, pg_basebackup), pgbackrest (apt-get install pgbackrest),
and cargo build --release. The results go into BENCHMARKS.md between the backup-bench markers.
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
import wal_bench as wb  # noqa: E402  (shared cluster helpers)

START = "<!-- backup-bench:start -->"
END = "<!-- backup-bench:end -->"


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(args, env=None):
    """Runs a command; returns (seconds, peak RSS bytes, CPU seconds, stdout). Peak RSS is the
    sum over the command's processes of each one's high-water mark (VmHWM, sampled every 20 ms,
    so the forking Python's own memory is not counted)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peaks = {}
    import threading

    def drain(stream, sink):
        sink.append(stream.read())

    out_buf, err_buf = [], []
    ts = [threading.Thread(target=drain, args=(p.stdout, out_buf)), threading.Thread(target=drain, args=(p.stderr, err_buf))]
    for t in ts:
        t.start()
    while p.poll() is None:
        todo = [p.pid]
        while todo:
            pid = todo.pop()
            peaks[pid] = max(peaks.get(pid, 0), _hwm(pid))
            todo += _children(pid)
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    for t in ts:
        t.join()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru.ru_utime + ru.ru_stime) - (before.ru_utime + before.ru_stime)
    out, err = out_buf[0].decode(), err_buf[0].decode()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {err[-2000:]}")
    return elapsed, sum(peaks.values()), cpu, out


class PgBackRest:
    def __init__(self, base, cluster, binary="pgbackrest", extra=""):
        """`extra`: more [global] options (lines)."""
        self.binary = binary
        self.dir = os.path.join(base, "pgbackrest")
        self.repo = os.path.join(self.dir, "repo")
        os.makedirs(self.repo, exist_ok=True)
        for sub in ("log", "lock", "spool"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.conf = os.path.join(self.dir, "pgbackrest.conf")
        with open(self.conf, "w") as f:
            f.write(
                f"[global]\nrepo1-path={self.repo}\nlog-path={self.dir}/log\nlock-path={self.dir}/lock\nspool-path={self.dir}/spool\n"
                f"log-level-console=warn\nlog-level-file=off\nstart-fast=y\ncompress-type=zst\nprocess-max=2\nrepo1-retention-full=1\n{extra}"
                f"[bench]\npg1-path={cluster.data}\npg1-socket-path={cluster.sock}\npg1-port={cluster.port}\npg1-user={cluster.user}\n"
            )
        if wb.IS_ROOT:
            wb.run(["chown", "-R", "postgres:postgres", self.dir])
        cluster.conf(f"archive_mode = on\narchive_command = '{self.binary} --config={self.conf} --stanza=bench archive-push %p'\n")

    def cmd(self, *args):
        return wb.owner_cmd([self.binary, f"--config={self.conf}", "--stanza=bench", *args])

    def setup(self):
        wb.run(self.cmd("stanza-create"))

    def backup(self):
        return timed(self.cmd("--type=full", "backup"))

    def labels(self):
        """The backups' labels, oldest first (a label starts with its full backup's time)."""
        bdir = os.path.join(self.repo, "backup", "bench")
        return sorted((d for d in os.listdir(bdir) if d[0].isdigit() and os.path.isdir(os.path.join(bdir, d))),
                      key=lambda d: (d.split("_")[-1] if "_" in d else d))

    def stored(self):
        """Bytes of the newest backup's directory (retention 1 expires the older fulls)."""
        return dir_bytes(os.path.join(self.repo, "backup", "bench", self.labels()[-1]))


def make_dataset(base, kind, scale):
    c = wb.Cluster(base, f"pg_{kind}")
    c.initdb("wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nshared_buffers = 256MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min")
    c.start()
    t0 = time.monotonic()
    if kind == "pgbench":
        wb.run([f"{wb.BIN}/pgbench", "-i", "-q", "-s", str(scale), "-h", c.sock, "-p", str(c.port), "-U", c.user, "postgres"])
    else:
        # Text over a skewed alphabet: zstd compresses it about 3x. Rows sized like the
        # pgbench set (scale 100 -> about 1.5 GB).
        rows = scale * 90000
        c.psql(
            "CREATE TABLE text3x AS SELECT g AS id, "
            "translate(md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text), "
            "'0123456789abcdef', 'aaaaaaabbbbccdef') AS t FROM generate_series(1, %d) g" % rows
        )
    c.psql("CHECKPOINT")
    c.psql("VACUUM ANALYZE")
    c.psql("CHECKPOINT")
    size = int(c.psql("SELECT sum(pg_database_size(oid)) FROM pg_database"))
    print(f"{kind}: {size / 1e9:.2f} GB of databases in {time.monotonic() - t0:.0f}s", flush=True)
    return c, size


def pgark_setup(base, c, name="pgark", slot="pgark_bench", top=""):
    d = os.path.join(base, name)
    os.makedirs(d, exist_ok=True)
    metrics = f"127.0.0.1:{wb.free_port()}"
    conf = os.path.join(d, "pgark.yaml")
    with open(conf, "w") as f:
        f.write(
            f"catalog: {d}/catalog\n{top}metrics:\n  listen: {metrics}\nservers:\n  bench:\n    conninfo: \"{c.conninfo('pgark')}\"\n"
            f"    slot: {slot}\n    synchronous: false\n    backup_compression: zstd:3\n    backup_workers: 2\n"
        )
    log = open(os.path.join(d, "serve.log"), "w")
    serve = subprocess.Popen([wb.PGARK, "serve", "--config", conf], stdout=log, stderr=log, env={**os.environ, "PGARK_LOG": "warn"})
    for _ in range(100):
        try:
            import urllib.request

            with urllib.request.urlopen(f"http://{metrics}/status", timeout=2) as r:
                if json.load(r)["servers"][0]["state"] == "streaming":
                    break
        except Exception:
            pass
        time.sleep(0.2)
    return d, conf, serve


def pgark_backup(conf):
    secs, rss, cpu, out = timed([wb.PGARK, "backup", "--config", conf, "bench", "--checkpoint", "fast", "--json"],
                                env={**os.environ, "PGARK_LOG": "warn"})
    return secs, rss, cpu, json.loads(out)


def pgark_delete_all(conf):
    out = wb.run([wb.PGARK, "list-backups", "--config", conf, "bench", "--json"]).stdout
    for b in json.loads(out):
        wb.run([wb.PGARK, "delete-backup", "--config", conf, "bench", b["id"], "--force"])


def bench_dataset(base, kind, scale, rounds):
    c, size = make_dataset(base, kind, scale)
    rest = PgBackRest(base, c)
    c.stop()
    c.start()
    rest.setup()
    d, conf, serve = pgark_setup(base, c)
    results = {t: [] for t in ("pg_basebackup_tar", "pg_basebackup_zstd", "pgbackrest", "pgark")}
    second_ratio = None
    try:
        for r in range(rounds):
            for tool in results:
                out = os.path.join(base, f"out_{tool}")
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                if wb.IS_ROOT:
                    wb.run(["chown", "postgres:postgres", out])
                if tool.startswith("pg_basebackup"):
                    args = [f"{wb.BIN}/pg_basebackup", "-h", c.sock, "-p", str(c.port), "-U", c.user, "-D", out, "-Ft", "-X", "none", "-c", "fast"]
                    if tool.endswith("zstd"):
                        args.append("--compress=client-zstd")
                    secs, rss, cpu, _ = timed(args)
                    stored = dir_bytes(out)
                elif tool == "pgbackrest":
                    secs, rss, cpu, _ = rest.backup()
                    stored = rest.stored()
                else:
                    pgark_delete_all(conf)
                    secs, rss, cpu, b = pgark_backup(conf)
                    stored = b["stored_new_bytes"]
                    if r == 0:
                        _, _, _, b2 = pgark_backup(conf)
                        second_ratio = (b2["stored_new_bytes"], stored)
                shutil.rmtree(out, ignore_errors=True)
                results[tool].append({"seconds": secs, "mb_s": size / 1e6 / secs, "stored": stored, "rss": rss, "cpu": cpu})
                print(f"{kind} round {r + 1} {tool:>18}: {secs:6.1f}s {size / 1e6 / secs:6.0f} MB/s stored {stored / 1e6:8.1f} MB "
                      f"rss {rss / 1e6:6.1f} MB cpu {cpu:5.1f}s", flush=True)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        c.stop()
        shutil.rmtree(c.dir, ignore_errors=True)
        shutil.rmtree(rest.dir, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)
    return size, results, second_ratio


def med(rs, k):
    return statistics.median([r[k] for r in rs])


def report(all_results, args):
    lines = [START, "", "## Base backups", ""]
    w = lines.append
    w(f"Generated by `python3 bench/backup_bench.py --scale {args.scale} --rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}, "
      f"{os.cpu_count()} cores, PostgreSQL {wb.run([f'{wb.BIN}/postgres', '--version']).stdout.split()[2]}, "
      f"{wb.run(['pgbackrest', 'version']).stdout.strip()}. Idle cluster, tools interleaved per round, medians. "
      "WAL excluded for every tool. MB/s is the database size over the wall time.")
    w("")
    for kind, (size, results, second) in all_results.items():
        label = "pgbench -i (filler compresses ~22x)" if kind == "pgbench" else "text rows (compress ~3x)"
        w(f"### {label}, {size / 1e9:.2f} GB")
        w("")
        w("| tool | seconds | MB/s | speed vs pg_basebackup zstd | stored MB | stored vs pgBackRest | peak RSS MB | CPU s |")
        w("|---|---|---|---|---|---|---|---|")
        ref_speed = med(results["pg_basebackup_zstd"], "mb_s")
        ref_size = med(results["pgbackrest"], "stored")
        for tool, rs in results.items():
            w(f"| {tool} | {med(rs, 'seconds'):.1f} | {med(rs, 'mb_s'):.0f} | {med(rs, 'mb_s') / ref_speed:.2f} | "
              f"{med(rs, 'stored') / 1e6:.1f} | {med(rs, 'stored') / ref_size:.2f} | {med(rs, 'rss') / 1e6:.1f} | {med(rs, 'cpu'):.1f} |")
        w("")
        if second:
            w(f"pgark's second backup of the unchanged database stored {second[0] / 1e3:.1f} kB, "
              f"{100 * second[0] / max(second[1], 1):.3f}% of the first's {second[1] / 1e6:.1f} MB.")
            w("")
    w("Targets (issue 3): pgark at least as fast as pg_basebackup with client-side zstd (speed ratio >= 1.00), stored size no "
      "larger than pgBackRest's (ratio <= 1.00), a second unchanged backup under 5% of the first.")
    w("")
    w(END)
    return "\n".join(lines)


def write_section(path, section):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        marker = "<!-- analysis: kept across runs -->"
        if marker not in text:
            text += "\n" + marker + "\n"
        text += "\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="scale 5, one round: for checking the script")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["pgbench", "text"])
    ap.add_argument("--out", default=os.path.join(wb.ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.scale, args.rounds = 5, 1
    if not os.path.exists(wb.PGARK):
        sys.exit(f"{wb.PGARK} is missing: run cargo build --release first")
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest is missing: apt-get install pgbackrest")
    base = tempfile.mkdtemp(prefix="pgark-bbench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        all_results = {}
        for kind in ("pgbench", "text"):
            if args.only and kind != args.only:
                continue
            all_results[kind] = bench_dataset(base, kind, args.scale, args.rounds)
        section = report(all_results, args)
        print(section)
        if not args.quick:
            write_section(args.out, section)
    finally:
        wb.cleanup(base)


if __name__ == "__main__":
    main()
