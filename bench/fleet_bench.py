#!/usr/bin/env python3
"""Many servers in one daemon (issue 16): memory, CPU and one synchronous server's latency.

One pgark protects N servers: N-1 asynchronous ones, slots on a few local clusters, and one
synchronous one on a cluster of its own that runs pgbench throughout. For each pgark binary
(this build, and a baseline given with --baseline) in one run:

1. alone: the synchronous server is the only one configured; pgbench -N for --seconds gives its
   commit latency (p50/p99 of every transaction pgbench logs) and pgark_ack_latency_seconds.
2. fleet: all N servers configured and streaming; RSS and CPU after they settle (steady, idle).
3. burst: pgark stopped, --burst-mb of WAL written on every async cluster (kept by the slots),
   pgark started: all N-1 catch up at once while pgbench runs on the synchronous server. Peak
   RSS, time to catch up, and the synchronous server's latency meanwhile.
4. idle: 30 s after the burst, RSS and CPU % of one core over --idle-seconds.
5. /metrics and /status: median scrape time and size over 20 scrapes.

Ratios are within one run (the machine is noisy). Usage:
  python3 bench/fleet_bench.py [--servers 100] [--clusters 4] [--burst-mb 64]
      [--baseline /path/to/old/pgark] [--out BENCHMARKS.md]
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wal_bench as wb  # noqa: E402

ROOT = wb.ROOT


def rss_cpu(pid):
    """Current RSS bytes, peak RSS bytes, CPU seconds, threads."""
    cur = peak = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return cur, peak, cpu, threads


def fetch(addr, path, timeout=10):
    t = time.time()
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as r:
        body = r.read()
    return time.time() - t, body


def histogram(addr, name, server):
    """Cumulative buckets {le: count} of one server's histogram."""
    _, body = fetch(addr, "/metrics")
    out = {}
    pat = re.compile(rf'^{name}_bucket{{(.*)}} (\S+)$')
    for line in body.decode().splitlines():
        m = pat.match(line)
        if not m or f'server="{server}"' not in m.group(1):
            continue
        le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
        out[float("inf") if le == "+Inf" else float(le)] = float(m.group(2))
    return out


def quantile(before, after, q):
    """q-quantile of the observations between two cumulative snapshots, interpolated linearly
    inside its bucket as Prometheus' histogram_quantile does (the buckets are 2-2.5x apart)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    prev_le, prev_c = 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= q * total:
            if le == float("inf") or c == prev_c:
                return prev_le if le == float("inf") else le
            return prev_le + (le - prev_le) * (q * total - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return les[-1]


def mean(addr, name, server):
    """(sum, count) of one server's histogram."""
    _, body = fetch(addr, "/metrics")
    out = [0.0, 0.0]
    for line in body.decode().splitlines():
        for i, suffix in enumerate(("_sum", "_count")):
            if line.startswith(f"{name}{suffix}{{") and f'server="{server}"' in line:
                out[i] = float(line.rsplit(" ", 1)[1])
    return out


class Daemon:
    def __init__(self, base, binary, servers, name, extra=""):
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        self.binary = binary
        self.metrics = f"127.0.0.1:{wb.free_port()}"
        self.config = os.path.join(self.dir, "pgark.yaml")
        lines = [f"catalog: {self.dir}/catalog", f"metrics:\n  listen: {self.metrics}"] + ([extra] if extra else []) + ["servers:"]
        for s in servers:
            lines.append(
                f"  {s['name']}:\n    conninfo: \"{s['conninfo']}\"\n    slot: {s['name']}\n"
                f"    synchronous: {'true' if s['sync'] else 'false'}"
            )
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.dir, "log"), "a")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.config], stdout=self.log, stderr=self.log,
                                     env={**os.environ, "PGARK_LOG": "warn"})

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            self.proc = None

    def status(self):
        try:
            _, body = fetch(self.metrics, "/status", timeout=5)
            return json.loads(body)["servers"]
        except Exception:
            return None

    def wait_streaming(self, n, limit=180):
        start = time.time()
        while time.time() - start < limit:
            st = self.status()
            if st and sum(1 for s in st if s.get("state") == "streaming") >= n:
                return time.time() - start
            time.sleep(0.5)
        raise RuntimeError(f"not all {n} servers streaming after {limit}s: {self.dir}/log")


def lsn(text):
    return wb.lsn_int(text) if text else 0


def pgbench_slice(c, seconds, logdir):
    """pgbench -N -c 1 for `seconds`, every transaction's latency logged; the latencies (ms)."""
    prefix = os.path.join(logdir, f"slice{time.time_ns()}")
    subprocess.run([f"{wb.BIN}/pgbench", "-n", "-N", "-c", "1", "-T", str(seconds), "-l", "--log-prefix", prefix,
                    "-h", c.sock, "-p", str(c.port), "-U", c.user, "postgres"], capture_output=True, text=True)
    out = []
    for name in os.listdir(logdir):
        if name.startswith(os.path.basename(prefix)):
            with open(os.path.join(logdir, name)) as f:
                out += [int(line.split()[2]) / 1000 for line in f if line.strip()]
            os.remove(os.path.join(logdir, name))
    return out


def sync_latency(d, sync_cluster, seconds, until=None):
    """The synchronous server's commit latency under pgbench: for `seconds`, or in 2 s slices
    while `until()` is false. p50/p99 over every transaction, and pgark's histogram."""
    before = histogram(d.metrics, "pgark_ack_latency_seconds", "sync")
    sum0, n0 = mean(d.metrics, "pgark_ack_latency_seconds", "sync")
    logdir = tempfile.mkdtemp(prefix="pgbench-log-")
    lat = []
    if until is None:
        lat = pgbench_slice(sync_cluster, seconds, logdir)
    else:
        while not until():
            lat += pgbench_slice(sync_cluster, 2, logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    after = histogram(d.metrics, "pgark_ack_latency_seconds", "sync")
    sum1, n1 = mean(d.metrics, "pgark_ack_latency_seconds", "sync")
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None  # noqa: E731
    return {
        "commits": len(lat),
        "commit_p50_ms": pick(0.5),
        "commit_p99_ms": pick(0.99),
        "ack_p50": quantile(before, after, 0.5),
        "ack_p99": quantile(before, after, 0.99),
        "ack_mean": (sum1 - sum0) / (n1 - n0) if n1 > n0 else None,
    }


def sample_until(d, done, every=0.5):
    peak_cur = 0
    while not done.is_set():
        try:
            cur, _, _, _ = rss_cpu(d.proc.pid)
            peak_cur = max(peak_cur, cur)
        except OSError:
            break
        time.sleep(every)
    return peak_cur


def run_binary(base, label, binary, clusters, sync_cluster, args, extra="", tag=None):
    n_async = args.servers - 1
    async_servers = [
        {"name": f"s{i:03d}", "conninfo": clusters[i % len(clusters)].conninfo(f"s{i:03d}"), "sync": False}
        for i in range(n_async)
    ]
    sync = {"name": "sync", "conninfo": sync_cluster.conninfo("sync"), "sync": True}
    r = {"tool": label}
    # A new physical slot starts at the last checkpoint's redo point: without a checkpoint here a
    # build would begin by streaming the bursts of the builds before it.
    for c in clusters + [sync_cluster]:
        c.psql("CHECKPOINT")

    # 1. alone.
    tag = tag or label
    alone = Daemon(base, binary, [sync], f"{tag}-alone", extra)
    alone.start()
    alone.wait_streaming(1)
    wb.wait_sync(sync_cluster, "sync")
    r["alone"] = sync_latency(alone, sync_cluster, args.seconds)
    alone.stop()
    drop_slots([sync_cluster])

    # 2. the fleet, settled.
    d = Daemon(base, binary, async_servers + [sync], f"{tag}-fleet", extra)
    d.start()
    r["startup_s"] = d.wait_streaming(args.servers)
    wb.wait_sync(sync_cluster, "sync")
    time.sleep(15)
    cur, _, cpu0, threads = rss_cpu(d.proc.pid)
    time.sleep(10)
    _, _, cpu1, _ = rss_cpu(d.proc.pid)
    r["steady_rss_mb"] = cur / 2**20
    r["steady_cpu_pct"] = (cpu1 - cpu0) / 10 * 100
    r["threads"] = threads

    # 3. burst: WAL piles up behind the slots while pgark is down, then all catch up at once.
    d.stop()
    targets = {}
    for c in clusters:
        c.psql("CREATE TABLE IF NOT EXISTS fill (v text)")
        start = lsn(c.psql("SELECT pg_current_wal_lsn()"))
        while lsn(c.psql("SELECT pg_current_wal_lsn()")) - start < args.burst_mb * 2**20:
            c.psql("INSERT INTO fill SELECT md5(i::text) || md5((i+1)::text) FROM generate_series(1, 100000) i")
        c.psql("SELECT pg_switch_wal()")
        targets[c.port] = lsn(c.psql("SELECT pg_current_wal_lsn()"))
    d.start()
    t0 = time.time()
    done = threading.Event()
    peak = {}
    sampler = threading.Thread(target=lambda: peak.update(rss=sample_until(d, done)))
    sampler.start()
    wb.wait_sync(sync_cluster, "sync")
    want = {s["name"]: targets[clusters[i % len(clusters)].port] for i, s in enumerate(async_servers)}
    caught_up = threading.Event()
    lat = {}
    bench = threading.Thread(target=lambda: lat.update(sync_latency(d, sync_cluster, 0, until=caught_up.is_set)))
    bench.start()
    while True:
        st = d.status() or []
        behind = [s for s in st if s["server"] in want and lsn(s.get("flushed_lsn")) < want[s["server"]]]
        if len(st) == args.servers and not behind:
            break
        if time.time() - t0 > 1800:
            raise RuntimeError("the burst did not catch up in 30 minutes")
        time.sleep(0.5)
    r["burst_s"] = time.time() - t0
    caught_up.set()
    bench.join()
    done.set()
    sampler.join()
    r["burst"] = lat
    _, hwm, _, _ = rss_cpu(d.proc.pid)
    r["burst_rss_mb"] = max(peak.get("rss", 0), hwm) / 2**20
    r["burst_gb"] = n_async * args.burst_mb / 1024

    # 4. idle.
    time.sleep(30)
    cur, _, cpu0, _ = rss_cpu(d.proc.pid)
    time.sleep(args.idle_seconds)
    cur2, _, cpu1, _ = rss_cpu(d.proc.pid)
    r["idle_rss_mb"] = max(cur, cur2) / 2**20
    r["idle_cpu_pct"] = (cpu1 - cpu0) / args.idle_seconds * 100

    # 5. scrapes.
    for path, key in [("/metrics", "metrics"), ("/status", "status")]:
        times, size = [], 0
        for _ in range(20):
            t, body = fetch(d.metrics, path)
            times.append(t)
            size = len(body)
        r[f"{key}_ms"] = statistics.median(times) * 1000
        r[f"{key}_kb"] = size / 1024
    d.stop()
    shutil.rmtree(d.dir, ignore_errors=True)
    shutil.rmtree(alone.dir, ignore_errors=True)
    for c in clusters:
        c.psql("TRUNCATE fill")
    return r


def drop_slots(clusters):
    """Every slot, once its walsender has gone."""
    for c in clusters:
        for _ in range(100):
            names = c.psql("SELECT slot_name FROM pg_replication_slots WHERE NOT active").split()
            for name in names:
                c.psql(f"SELECT pg_drop_replication_slot('{name}')")
            if not c.psql("SELECT count(*) FROM pg_replication_slots").strip("0"):
                break
            time.sleep(0.2)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(results, args):
    lines = [
        f"### Many servers in one daemon ({args.servers} servers, {args.clusters} async clusters + 1 synchronous, "
        f"burst {args.burst_mb} MB per async cluster, {time.strftime('%Y-%m-%d')})",
        "",
        "| build | steady RSS MB | steady CPU % | threads | burst: catch-up s | burst peak RSS MB | idle RSS MB | idle CPU % | /metrics ms, KB | /status ms, KB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['tool']} | {r['steady_rss_mb']:.0f} | {r['steady_cpu_pct']:.1f} | {r['threads']} | {r['burst_s']:.0f} "
            f"({r['burst_gb']:.1f} GB) | {r['burst_rss_mb']:.0f} | {r['idle_rss_mb']:.0f} | {r['idle_cpu_pct']:.1f} | "
            f"{r['metrics_ms']:.1f}, {r['metrics_kb']:.0f} | {r['status_ms']:.1f}, {r['status_kb']:.0f} |"
        )
    lines += [
        "",
        "The synchronous server's commit latency (pgbench -N -c 1, every transaction logged), and pgark's acknowledgement latency: "
        "p50 and p99 from pgark_ack_latency_seconds, interpolated inside their buckets as histogram_quantile does; the mean is exact (sum / count):",
        "",
        "| build | commit p50 / p99 ms alone | commit p50 / p99 ms during the burst (commits) | burst / alone p50, p99 | pgark ack p50 / p99 / mean ms alone | during the burst | burst / alone p50, p99, mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, b = r["alone"], r["burst"]
        ms = lambda x: None if x is None else x * 1000  # noqa: E731
        ratio = lambda k: (b[k] / a[k]) if a.get(k) and b.get(k) else None  # noqa: E731
        lines.append(
            f"| {r['tool']} | {fmt(a['commit_p50_ms'], '.2f')} / {fmt(a['commit_p99_ms'], '.2f')} | "
            f"{fmt(b['commit_p50_ms'], '.2f')} / {fmt(b['commit_p99_ms'], '.2f')} ({b['commits']}) | "
            f"{fmt(ratio('commit_p50_ms'), '.2f')}x, {fmt(ratio('commit_p99_ms'), '.2f')}x | "
            f"{fmt(ms(a['ack_p50']), '.3f')} / {fmt(ms(a['ack_p99']), '.2f')} / {fmt(ms(a.get('ack_mean')), '.3f')} | "
            f"{fmt(ms(b['ack_p50']), '.3f')} / {fmt(ms(b['ack_p99']), '.2f')} / {fmt(ms(b.get('ack_mean')), '.3f')} | "
            f"{fmt(ratio('ack_p50'), '.2f')}x, {fmt(ratio('ack_p99'), '.2f')}x, {fmt(ratio('ack_mean'), '.2f')}x |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--burst-mb", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--baseline", help="an older pgark binary to run side by side")
    ap.add_argument("--out")
    ap.add_argument("--only", help="run only these builds (labels separated by ';')")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="pgark-fleet-")
    os.chmod(base, 0o755)
    per = args.servers // args.clusters + 5
    conf = (f"max_wal_senders = {per + 5}\nmax_replication_slots = {per + 5}\nmax_connections = {per + 20}\n"
            "wal_level = replica\nmax_wal_size = 4GB\ncheckpoint_timeout = 30min\n")
    clusters, sync_cluster = [], None
    try:
        for i in range(args.clusters):
            c = wb.Cluster(base, f"pg{i}")
            c.initdb(conf + "shared_buffers = 64MB\n")
            c.start()
            clusters.append(c)
        sync_cluster = wb.Cluster(base, "pgsync")
        sync_cluster.initdb(conf)
        sync_cluster.start()
        wb.run([f"{wb.BIN}/pgbench", "-i", "-s", "1", "-h", sync_cluster.sock, "-p", str(sync_cluster.port), "-U", sync_cluster.user, "postgres"])
        sync_cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'sync'")
        sync_cluster.psql("SELECT pg_reload_conf()")
        # This build as it ships, this build without pacing (what the pacing costs the catch-up and
        # buys the synchronous server), and the baseline.
        builds = [("pgark", wb.PGARK, ""), ("pgark, catchup_pacing: false", wb.PGARK, "catchup_pacing: false")]
        builds += [("baseline", args.baseline, "")] if args.baseline else []
        results = []
        for i, (label, binary, extra) in enumerate(builds):
            if args.only and label not in args.only.split(";"):
                continue
            print(f"== {label}: {binary}", flush=True)
            r = run_binary(base, label, binary, clusters, sync_cluster, args, extra, tag=f"b{i}")
            print(json.dumps(r), flush=True)
            results.append(r)
            drop_slots(clusters + [sync_cluster])
        text = report(results, args)
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text)
    finally:
        for c in clusters + ([sync_cluster] if sync_cluster else []):
            c.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
