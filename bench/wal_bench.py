#!/usr/bin/env python3
"""WAL streaming benchmark: pgark against the peers it replaces, side by side in one run.

1. Commit latency as a synchronous standby: pgbench -N (1 and 8 clients) against one primary with
   no synchronous standby, pgark, pg_receivewal --synchronous, and a real PostgreSQL standby.
   Modes are interleaved round by round so that drift on a noisy machine hits all of them alike;
   the report gives medians and ratios.
2. WAL ingest: >= 2 GB of WAL retained by slots while no receiver runs, then the time each
   receiver takes to catch up and flush it all, CPU seconds per GB, bytes written, peak RSS.
   The WAL comes from rows of md5 text (compresses about 2x), not pgbench filler (about 22x).

Usage: python3 bench/wal_bench.py [--quick] [--out BENCHMARKS.md]
Needs: PostgreSQL 15 server and client tools (pg_receivewal, pgbench, pg_basebackup), and a
release build of pgark (cargo build --release). Runs as root (servers as the postgres user) or
as an ordinary user. Everything listens on loopback / Unix sockets only.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PGARK = os.environ.get("PGARK_BIN", os.path.join(ROOT, "target", "release", "pgark"))
IS_ROOT = os.geteuid() == 0
# Top-level YAML added to every pgark config this module writes (compare_builds --new-top).
EXTRA_TOP = ""


def bindir():
    env = os.environ.get("PGARK_PG_BINDIR")
    if env:
        return env
    return subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()


BIN = bindir()


def owner_cmd(args):
    return (["runuser", "-u", "postgres", "--"] + args) if IS_ROOT else args


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Cluster:
    def __init__(self, base, name, port=None):
        self.dir = os.path.join(base, name)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "sock")
        self.port = port or free_port()
        self.user = "postgres" if IS_ROOT else os.environ.get("USER", "postgres")
        os.makedirs(self.sock, exist_ok=True)
        os.chmod(self.dir, 0o755)
        if IS_ROOT:
            run(["chown", "-R", "postgres:postgres", self.dir])

    def initdb(self, conf):
        run(owner_cmd([f"{BIN}/initdb", "-D", self.data, "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8", "--locale=C"]))
        self.conf(conf)
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write("\nlocal replication all trust\n")

    def conf(self, extra):
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"\nport = {self.port}\nunix_socket_directories = '{self.sock}'\nlisten_addresses = ''\n{extra}\n")

    def start(self):
        run(owner_cmd([f"{BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "start"]))

    def stop(self):
        subprocess.run(owner_cmd([f"{BIN}/pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"]), capture_output=True)

    def psql(self, sql):
        return run([f"{BIN}/psql", "-X", "-A", "-t", "-q", "-h", self.sock, "-p", str(self.port), "-U", self.user, "-d", "postgres", "-c", sql]).stdout.strip()

    def conninfo(self, app=None):
        s = f"host={self.sock} port={self.port} user={self.user}"
        return s + (f" application_name={app}" if app else "")


def lsn_int(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def proc_stats(pid):
    """CPU seconds (user+sys, including threads), peak RSS bytes, bytes written to storage."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) * 1024
    written = 0
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    written = int(line.split()[1])
    except OSError:
        pass
    return cpu, rss, written


class Pgark:
    def __init__(self, base, primary, slot, synchronous=True, compression="zstd"):
        self.dir = tempfile.mkdtemp(prefix="pgark-", dir=base)
        self.metrics = f"127.0.0.1:{free_port()}"
        self.config = os.path.join(self.dir, "pgark.yaml")
        with open(self.config, "w") as f:
            f.write(
                f"catalog: {self.dir}/catalog\n{EXTRA_TOP}metrics:\n  listen: {self.metrics}\nservers:\n  bench:\n"
                f"    conninfo: \"{primary.conninfo('pgark')}\"\n    slot: {slot}\n"
                f"    synchronous: {'true' if synchronous else 'false'}\n    compression: {compression}\n"
            )
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen([PGARK, "serve", "--config", self.config], stdout=self.log, stderr=self.log, env={**os.environ, "PGARK_LOG": "warn"})

    def status(self):
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/status", timeout=2) as r:
                return json.load(r)["servers"][0]
        except Exception:
            return None

    def has_segment(self, name, archived=False):
        wal = os.path.join(self.dir, "catalog", "bench", "wal")
        return (not archived and os.path.exists(os.path.join(wal, name))) or os.path.exists(os.path.join(wal, name + ".zst"))

    def archived(self):
        wal = os.path.join(self.dir, "catalog", "bench", "wal")
        try:
            names = set(os.listdir(wal))
        except OSError:
            return True
        return all(n + ".zst" in names or n + ".sum" in names for n in names if len(n) == 24)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


class Receivewal:
    def __init__(self, base, primary, slot, synchronous=True):
        self.dir = tempfile.mkdtemp(prefix="receivewal-", dir=base)
        args = [f"{BIN}/pg_receivewal", "-D", self.dir, "-S", slot, "-d", primary.conninfo("pg_receivewal"), "-n", "-s", "10"]
        if synchronous:
            args.append("--synchronous")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "..", "receivewal.log"), "a"))

    def has_segment(self, name):
        return os.path.exists(os.path.join(self.dir, name))

    def archived(self):
        return True

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_sync(primary, app, limit=60):
    start = time.time()
    while time.time() - start < limit:
        if primary.psql(f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{app}'") == "sync":
            return
        time.sleep(0.2)
    raise RuntimeError(f"{app} never became a synchronous standby")


def pgbench(primary, clients, seconds):
    out = run([f"{BIN}/pgbench", "-n", "-N", "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "postgres"]).stdout
    tps = lat = None
    for line in out.splitlines():
        if line.startswith("tps"):
            tps = float(line.split("=")[1].split()[0])
        if line.startswith("latency average"):
            lat = float(line.split("=")[1].split()[0])
    return tps, lat


def commit_latency_bench(base, rounds, seconds, only_modes=None):
    primary = Cluster(base, "primary")
    primary.initdb("shared_buffers = 256MB\nmax_wal_size = 4GB\nsynchronous_commit = on\nwal_keep_size = 0\n")
    primary.start()
    primary.psql("SELECT pg_create_physical_replication_slot('bench_pgark', true)")
    primary.psql("SELECT pg_create_physical_replication_slot('bench_rw', true)")
    run([f"{BIN}/pgbench", "-i", "-s", "10", "-q", "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "postgres"])
    standby = Cluster(base, "standby")
    run([f"{BIN}/pg_basebackup", "-h", primary.sock, "-p", str(primary.port), "-U", primary.user, "-D", standby.data, "-R", "-X", "stream", "-c", "fast"])
    if IS_ROOT:
        run(["chown", "-R", "postgres:postgres", standby.dir])
    standby.conf("hot_standby = on\n")
    # pg_basebackup -R wrote primary_conninfo into postgresql.auto.conf, which wins over postgresql.conf.
    # The standby has a slot and runs only in its own mode, like pgark and pg_receivewal: every
    # receiver costs the 2-core machine CPU and disk flushes, so one left running in the other
    # modes would slow them all (an earlier version of this script did that and flattered the
    # standby: measured 0.97x no-standby with it running everywhere, 0.66x when run alone).
    primary.psql("SELECT pg_create_physical_replication_slot('standby1', true)")
    with open(os.path.join(standby.data, "postgresql.auto.conf"), "a") as f:
        f.write(f"primary_conninfo = '{primary.conninfo('standby1')}'\nprimary_slot_name = 'standby1'\n")

    class Standby:
        def __init__(self):
            standby.start()

        def stop(self):
            standby.stop()

    receivers = {
        "pgark": lambda: Pgark(base, primary, "bench_pgark"),
        "pg_receivewal": lambda: Receivewal(base, primary, "bench_rw"),
        "standby": Standby,
    }
    apps = {"none": "", "pgark": "pgark", "pg_receivewal": "pg_receivewal", "standby": "standby1"}
    results = {}
    modes = [m for m in apps if not only_modes or m in only_modes]
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        for mode in order:
            rec = receivers[mode]() if mode in receivers else None
            primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{apps[mode]}'")
            primary.psql("SELECT pg_reload_conf()")
            if apps[mode]:
                wait_sync(primary, apps[mode])
            for clients in (1, 8):
                tps, lat = pgbench(primary, clients, seconds)
                results.setdefault((mode, clients), []).append((tps, lat))
                print(f"round {r + 1} {mode:>13} {clients} clients: {tps:8.1f} tps, {lat:6.3f} ms", flush=True)
            if rec:
                rec.stop()
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
    primary.psql("SELECT pg_reload_conf()")
    primary.stop()
    return results


def ingest_bench(base, gigabytes, reps):
    primary = Cluster(base, "ingest")
    primary.initdb("shared_buffers = 256MB\nmax_wal_size = 8GB\ncheckpoint_timeout = 30min\nsynchronous_commit = off\nwal_keep_size = 0\nautovacuum = off\n")
    primary.start()
    tools = ["pgark", "pgark_nocompress", "pg_receivewal"]
    for t in tools:
        for i in range(reps):
            primary.psql(f"SELECT pg_create_physical_replication_slot('ingest_{t}_{i}', true)")
    start_lsn = lsn_int(primary.psql("SELECT pg_current_wal_lsn()"))
    primary.psql("CREATE TABLE ingest (id bigint, t text)")
    target = start_lsn + int(gigabytes * (1 << 30))
    batch = 400_000
    while lsn_int(primary.psql("SELECT pg_current_wal_lsn()")) < target:
        primary.psql(f"INSERT INTO ingest SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text) FROM generate_series(1, {batch}) g")
    primary.psql("SELECT pg_switch_wal()")
    end = lsn_int(primary.psql("SELECT pg_current_wal_flush_lsn()"))
    retained = end - start_lsn
    print(f"WAL retained by the slots: {retained / (1 << 30):.2f} GiB", flush=True)
    results = {}
    for i in range(reps):
        for t in (tools if i % 2 == 0 else list(reversed(tools))):
            slot = f"ingest_{t}_{i}"
            t0 = time.time()
            if t == "pg_receivewal":
                rec = Receivewal(base, primary, slot, synchronous=False)
            else:
                rec = Pgark(base, primary, slot, synchronous=True, compression="none" if t == "pgark_nocompress" else "zstd")
            pid = rec.proc.pid
            # Done when the segment holding the last byte is durable under its final name (both tools
            # fsync and rename at a segment end). Slot positions would be quantized by pg_receivewal's
            # status interval.
            segno = (end - 1) // (16 << 20)
            last = "%08X%08X%08X" % (1, segno // 256, segno % 256)
            while True:
                if rec.has_segment(last):
                    break
                if rec.proc.poll() is not None:
                    raise RuntimeError(f"{t} exited early")
                time.sleep(0.05)
            elapsed = time.time() - t0
            cpu_flush, rss, written = proc_stats(pid)
            while not rec.archived():
                time.sleep(0.1)
            cpu_all, rss, written = proc_stats(pid)
            rec.stop()
            gb = retained / 1e9
            results.setdefault(t, []).append(
                {"seconds": elapsed, "mb_s": retained / 1e6 / elapsed, "cpu_s_per_gb": cpu_all / gb, "cpu_flush_s_per_gb": cpu_flush / gb, "written_gb": written / 1e9, "peak_rss_mb": rss / 1e6}
            )
            print(f"ingest {t:>16}: {elapsed:6.1f}s {retained / 1e6 / elapsed:7.1f} MB/s cpu {cpu_all / gb:.2f} s/GB (at flush {cpu_flush / gb:.2f}) rss {rss / 1e6:.1f} MB written {written / 1e9:.2f} GB", flush=True)
    primary.stop()
    return results, retained


def median(xs):
    return statistics.median(xs)


def report(latency, ingest, retained, args):
    lines = []
    w = lines.append
    w("# Benchmarks")
    w("")
    w(f"Generated by `python3 bench/wal_bench.py{' --quick' if args.quick else ''}` on {time.strftime('%Y-%m-%d')}, "
      f"{os.cpu_count()} cores, PostgreSQL {run([f'{BIN}/postgres', '--version']).stdout.split()[-1]}. The machine is shared and noisy: "
      "compare ratios within this run, not absolute numbers across runs.")
    w("")
    w("## Commit throughput with a synchronous standby (pgbench -N)")
    w("")
    w(f"One primary, `synchronous_commit = on`, scale 10, {args.seconds}s per run, {args.rounds} rounds interleaved; medians. "
      "In each mode only that mode's receiver runs (none: no receiver at all).")
    w("")
    w("| synchronous standby | clients | TPS | latency ms | TPS vs no standby | TPS vs pg_receivewal |")
    w("|---|---|---|---|---|---|")
    for clients in (1, 8):
        base_tps = median([t for t, _ in latency[("none", clients)]])
        rw_tps = median([t for t, _ in latency[("pg_receivewal", clients)]])
        for mode in ("none", "pgark", "pg_receivewal", "standby"):
            tps = median([t for t, _ in latency[(mode, clients)]])
            lat = median([l for _, l in latency[(mode, clients)]])
            w(f"| {mode} | {clients} | {tps:.0f} | {lat:.2f} | {tps / base_tps:.2f} | {tps / rw_tps:.2f} |")
    w("")
    w("Targets (issue 2): with 8 clients pgark >= 1.15x pg_receivewal and >= 0.85x no standby; with 1 client >= 1.2x pg_receivewal.")
    w("")
    w("## WAL ingest (catch-up after an outage)")
    w("")
    w(f"{retained / (1 << 30):.2f} GiB of WAL (md5 text rows, about 2x compressible) retained by slots while no receiver ran; "
      f"then each receiver alone catches up until the segment holding the last byte is durable under its final name. {args.reps} repetitions, medians. "
      "CPU and bytes written are the receiver process's own. CPU s/GB is counted twice: up to the moment everything is "
      "durable (caught up and flushed), and once pgark's background compression of the last segments has finished too.")
    w("")
    w("| receiver | seconds | MB/s | throughput vs pg_receivewal | CPU s/GB at flush | CPU s/GB with compression done | bytes written (GB) | peak RSS (MB) |")
    w("|---|---|---|---|---|---|---|---|")
    rw = median([r["mb_s"] for r in ingest["pg_receivewal"]])
    for t in ("pgark", "pgark_nocompress", "pg_receivewal"):
        rs = ingest[t]
        mbs = median([r["mb_s"] for r in rs])
        w(f"| {t} | {median([r['seconds'] for r in rs]):.1f} | {mbs:.0f} | {mbs / rw:.2f} | {median([r['cpu_flush_s_per_gb'] for r in rs]):.2f} | "
          f"{median([r['cpu_s_per_gb'] for r in rs]):.2f} | "
          f"{median([r['written_gb'] for r in rs]):.2f} | {median([r['peak_rss_mb'] for r in rs]):.1f} |")
    w("")
    w("`pgark` is the default (zstd level 1, synchronous: true); `pgark_nocompress` is `compression: none`; pg_receivewal runs without "
      "compression. Targets (issue 2): >= 1.3x pg_receivewal's throughput, <= 1.5 CPU s/GB, peak RSS < 64 MB.")
    w("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the script")
    ap.add_argument("--out", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--gigabytes", type=float, help="WAL to retain for the ingest test (default 2, quick 0.1)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of the commit test (default 3)")
    ap.add_argument("--seconds", type=int, help="seconds per pgbench run (default 15)")
    ap.add_argument("--only", choices=["commit", "ingest"], help="run one part and print it; BENCHMARKS.md is left alone")
    ap.add_argument("--modes", help="with --only commit: comma-separated modes among none,pgark,pg_receivewal,standby")
    args = ap.parse_args()
    rounds, seconds, args.reps, gigabytes = (1, 3, 1, 0.1) if args.quick else (3, 15, 2, 2.0)
    args.rounds, args.seconds = args.rounds or rounds, args.seconds or seconds
    if args.gigabytes:
        gigabytes = args.gigabytes
    if not os.path.exists(PGARK):
        sys.exit(f"{PGARK} is missing: run cargo build --release first")
    base = tempfile.mkdtemp(prefix="pgark-bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    if args.only or os.environ.get("BENCH_ONLY") == "ingest":
        try:
            if args.only == "commit":
                modes = args.modes.split(",") if args.modes else None
                results = commit_latency_bench(base, args.rounds, args.seconds, modes)
                for (mode, clients), runs in sorted(results.items()):
                    tps = statistics.median(t for t, _ in runs)
                    print(f"median {mode:>13} {clients} clients: {tps:8.1f} tps over {len(runs)} rounds")
            else:
                ingest_bench(base, gigabytes, args.reps)
        finally:
            cleanup(base)
        return
    try:
        latency = commit_latency_bench(base, args.rounds, args.seconds)
        ingest, retained = ingest_bench(base, gigabytes, args.reps)
        text = report(latency, ingest, retained, args)
        # Hand-written analysis below the marker survives re-runs.
        marker = "<!-- analysis: kept across runs -->"
        if os.path.exists(args.out):
            old = open(args.out).read()
            if marker in old:
                text += "\n" + marker + old.split(marker, 1)[1]
        with open(args.out, "w") as f:
            f.write(text)
        print(text)
    finally:
        cleanup(base)


def write_marked_section(path, section, start, end):
    """Replaces the text between the `start` and `end` markers of `path` with `section` (which
    carries the markers), or appends it: each script owns one section of BENCHMARKS.md."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text += "\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def cleanup(base):
    for d in os.listdir(base):
        data = os.path.join(base, d, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(owner_cmd([f"{BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"]), capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
