#!/usr/bin/env python3
"""Verify and restore-drill benchmark: pgark against pgBackRest on the same data, in one run.

Setup: one PostgreSQL 15 cluster (pgbench -i -s 100, about 1.5 GB), `pgark serve` streaming it
into a catalog and one `pgark backup`; pgBackRest (repo on local disk, zstd, process-max=2) with
archive-push and one full backup of the same state; then about 0.5 GB of WAL (md5 text rows)
written after both backups, flushed and compressed by pgark and archived by pgBackRest. Then
`pgark serve` and the primary are stopped, so that every round sees the same catalog and repo.

1. Verify: `pgark verify --config F main --all --json` (bytes_checked and seconds from its JSON)
   against `pgbackrest --stanza=bench verify` (its exit status, and its text output must show the
   backup's files and the archive's WAL checked, all valid). GB/s is the stored bytes read over
   the wall time: pgark's bytes_checked; for pgBackRest the repo's size on disk (backup + archive).
2. Drill RTO: `pgark drill --config F main --json` (restore_seconds, recovery_seconds,
   total_seconds from its JSON; it also runs pg_amcheck and per-database checks after recovery,
   which total_seconds does not include) against the same by hand with pgBackRest: `pgbackrest
   restore` (process-max=2, into an empty directory, default target: end of the archive), then
   `pg_ctl start`, polling until `pg_is_in_recovery()` is false. The manual cluster gets the
   settings pgark's drill gives its cluster (shared_buffers 32MB, hot_standby off, no archiving),
   so that only the tools differ. Total = start of the restore to the end of recovery, as pgark's.

The page cache is dropped (sync; echo 3 > /proc/sys/vm/drop_caches, as root) before every
measured command. Rounds interleaved, the tool going first alternating; medians.

Usage: python3 bench/verify_drill_bench.py [--quick] [--scale 100] [--rounds 3] [--wal-gb 0.5]
Needs: PostgreSQL 15, pgbackrest (Debian's), cargo build --release. Results go into BENCHMARKS.md
between the verify-drill-bench markers (not with --quick).
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_bench as bb  # noqa: E402
import restore_bench as rb  # noqa: E402
import wal_bench as wb  # noqa: E402

START = "<!-- verify-drill-bench:start -->"
END = "<!-- verify-drill-bench:end -->"
SERVER = "main"
TOOLS = ("pgark", "pgbackrest")

DROP_NOTE = []  # set once if the page cache could not be dropped


def cold():
    """Flushes dirty data and drops the page cache (root only); notes once if it could not."""
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        if not DROP_NOTE:
            DROP_NOTE.append(f"page cache NOT dropped ({e}): reads may come from memory")
            print("WARNING: " + DROP_NOTE[0], flush=True)


def du_bytes(path):
    """Bytes on disk (allocated blocks) under path."""
    return int(wb.run(["du", "-s", "-B1", path]).stdout.split()[0])


def pgark_setup(base, c):
    """pgark serve on the cluster, server `main`; as root with catalog_group so that PostgreSQL's
    user (the drill's restore_command) can read the catalog and the config."""
    d = os.path.join(base, "pgark")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o755)
    metrics = f"127.0.0.1:{wb.free_port()}"
    conf = os.path.join(d, "pgark.yaml")
    with open(conf, "w") as f:
        f.write(
            f"catalog: {d}/catalog\n"
            + ("catalog_group: postgres\n" if wb.IS_ROOT else "")
            + f"metrics:\n  listen: {metrics}\n"
            f"drill:\n  path: {d}/drills\n"
            f"servers:\n  {SERVER}:\n    conninfo: \"{c.conninfo('pgark')}\"\n"
            f"    slot: pgark_bench\n    synchronous: false\n    backup_compression: zstd:3\n    backup_workers: 2\n"
        )
    os.chmod(conf, 0o644)
    log = open(os.path.join(d, "serve.log"), "w")
    serve = subprocess.Popen([wb.PGARK, "serve", "--config", conf], stdout=log, stderr=log, env={**os.environ, "PGARK_LOG": "warn"})
    import urllib.request

    for _ in range(150):
        try:
            with urllib.request.urlopen(f"http://{metrics}/status", timeout=2) as r:
                if json.load(r)["servers"][0]["state"] == "streaming":
                    break
        except Exception:
            pass
        if serve.poll() is not None:
            raise RuntimeError(f"pgark serve exited: {open(os.path.join(d, 'serve.log')).read()[-2000:]}")
        time.sleep(0.2)
    else:
        raise RuntimeError("pgark serve never streamed")
    return d, conf, serve, metrics


def wait_pgark_compressed(catalog, limit=600):
    """Until every completed segment in the catalog is in its final (compressed) form."""
    wal = os.path.join(catalog, SERVER, "wal")
    t0 = time.time()
    while time.time() - t0 < limit:
        names = set(os.listdir(wal))
        if all(n + ".zst" in names or n + ".sum" in names for n in names if len(n) == 24):
            return
        time.sleep(0.5)
    raise RuntimeError("pgark did not compress its WAL in time")


def pgark(conf, *args):
    return [wb.PGARK, args[0], "--config", conf, *args[1:]]


def pgark_verify(conf):
    secs, rss, cpu, out = bb.timed(pgark(conf, "verify", SERVER, "--all", "--json"), env={**os.environ, "PGARK_LOG": "warn"})
    v = json.loads(out)
    if v["status"] != "ok" or v["problems"]:
        raise RuntimeError(f"pgark verify found problems: {out[:2000]}")
    if not v["segments_checked"] or not v["chunks_checked"] or not v["backups"]:
        raise RuntimeError(f"pgark verify checked nothing: {out[:2000]}")
    return {"seconds": secs, "rss": rss, "cpu": cpu, "bytes": v["bytes_checked"], "own_seconds": v["seconds"],
            "segments": v["segments_checked"], "chunks": v["chunks_checked"], "files": v["files_checked"]}


def pgbackrest_verify(rest, repo_bytes):
    # timed() raises on a non-zero exit status.
    secs, rss, cpu, out = bb.timed(rest.cmd("--output=text", "--verbose", "verify"))
    wal = [int(x) for x in re.findall(r"total WAL checked: (\d+)", out)]
    wal_ok = [int(x) for x in re.findall(r"total valid WAL: (\d+)", out)]
    files = [int(x) for x in re.findall(r"total files checked: (\d+)", out)]
    files_ok = [int(x) for x in re.findall(r"total valid files: (\d+)", out)]
    if not re.search(r"status: ok", out) or not wal or not files or sum(wal) == 0 or sum(files) == 0 \
            or wal != wal_ok or files != files_ok:
        raise RuntimeError(f"pgbackrest verify did not check (or pass) the backup and the archive:\n{out}")
    return {"seconds": secs, "rss": rss, "cpu": cpu, "bytes": repo_bytes, "segments": sum(wal), "files": sum(files), "text": out}


def pgark_drill(conf):
    t0 = time.monotonic()
    p = subprocess.run(pgark(conf, "drill", SERVER, "--json"), capture_output=True, text=True, env={**os.environ, "PGARK_LOG": "warn"})
    wall = time.monotonic() - t0
    try:
        v = json.loads(p.stdout)
    except ValueError:
        v = {}
    if p.returncode != 0 or not v.get("success"):
        raise RuntimeError(f"pgark drill failed ({p.returncode}): {p.stdout[-3000:]} {p.stderr[-2000:]}")
    checks = v.get("checks") or []
    if not checks or not all(c.get("ok") for c in checks):
        raise RuntimeError(f"pgark drill checks: {checks}")
    return {"restore": v["restore_seconds"], "recovery": v["recovery_seconds"], "total": v["total_seconds"], "wall": wall,
            "replay_lsn": (v.get("recovered") or {}).get("replay_lsn"), "checks": [c["name"] for c in checks]}


def pgbackrest_drill(base, rest, limit=3600):
    """pgbackrest restore into an empty directory, pg_ctl start, poll until recovery ended; then
    stop and remove it. Timed like pgark's drill (checks not included)."""
    target = os.path.join(base, "drill_pgbackrest")
    shutil.rmtree(target, ignore_errors=True)
    rb.fresh_dir(target)
    data = os.path.join(target, "data")
    rb.fresh_dir(data)
    os.chmod(data, 0o700)
    sock = os.path.join(target, "sock")
    rb.fresh_dir(sock)
    port = wb.free_port()
    psql = [f"{wb.BIN}/psql", "-X", "-A", "-t", "-q", "-h", sock, "-p", str(port), "-U", "postgres" if wb.IS_ROOT else os.environ.get("USER", "postgres"),
            "-d", "postgres", "-c"]
    t0 = time.monotonic()
    bb.timed(rest.cmd(f"--pg1-path={data}", "--process-max=2", "restore"))
    t_restored = time.monotonic()
    with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
        # What pgark's drill sets on its cluster (docs/operations.md, Restore drills), so that
        # PostgreSQL itself runs alike in both.
        f.write(f"\nport = {port}\nunix_socket_directories = '{sock}'\nlisten_addresses = ''\narchive_mode = off\n"
                "max_wal_senders = 0\nsynchronous_standby_names = ''\nshared_buffers = 32MB\nmax_connections = 10\n"
                "huge_pages = off\nhot_standby = off\n")
    if wb.IS_ROOT:
        os.chown(os.path.join(data, "postgresql.auto.conf"), *pg_ids())
    t_start = time.monotonic()
    subprocess.run(wb.owner_cmd([f"{wb.BIN}/pg_ctl", "-D", data, "-l", os.path.join(target, "log"), "-W", "start"]), check=True, capture_output=True)
    ended = None
    while time.monotonic() - t0 < limit:
        p = subprocess.run(psql + ["SELECT pg_is_in_recovery()"], capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip() == "f":
            ended = time.monotonic()
            break
        time.sleep(0.1)
    try:
        if ended is None:
            raise RuntimeError(f"pgbackrest drill: recovery did not end; see {target}/log")
        lsn = subprocess.run(psql + ["SELECT pg_last_wal_replay_lsn()"], capture_output=True, text=True).stdout.strip()
    finally:
        subprocess.run(wb.owner_cmd([f"{wb.BIN}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), capture_output=True)
    shutil.rmtree(target, ignore_errors=True)
    return {"restore": t_restored - t0, "recovery": ended - t_start, "total": ended - t0, "replay_lsn": lsn}


def pg_ids():
    import pwd

    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def stop_all_clusters(base):
    """Immediate stop of every PostgreSQL whose data directory is under base (the primary, a
    manual restore, a drill's cluster left by an interrupted drill)."""
    for root, dirs, files in os.walk(base):
        if "postmaster.pid" in files:
            subprocess.run(wb.owner_cmd([f"{wb.BIN}/pg_ctl", "-D", root, "-m", "immediate", "stop"]), capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="scale 10, one round, 0.1 GB of WAL: for checking the script")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wal-gb", type=float, default=0.5)
    ap.add_argument("--out", default=os.path.join(wb.ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.scale, args.rounds, args.wal_gb = 10, 1, 0.1
    if not os.path.exists(wb.PGARK):
        sys.exit(f"{wb.PGARK} is missing: run cargo build --release first")
    if shutil.which("pgbackrest") is None:
        sys.exit("pgbackrest is missing: apt-get install pgbackrest")
    # Cleanup (finally below) also on SIGTERM, and on SIGINT when started in the background
    # (where a shell ignores it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    base = tempfile.mkdtemp(prefix="pgark-vdbench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    started = {}
    try:
        section = run(base, args, started)
        print(section)
        if not args.quick:
            write_section(args.out, section)
    finally:
        s = started.get("serve")
        if s is not None and s.poll() is None:
            s.terminate()
            try:
                s.wait(timeout=60)
            except subprocess.TimeoutExpired:
                s.kill()
        stop_all_clusters(base)
        shutil.rmtree(base, ignore_errors=True)


def run(base, args, started):
    c, size = bb.make_dataset(base, "pgbench", args.scale)
    rest = bb.PgBackRest(base, c)
    c.conf("max_wal_size = 8GB\n")
    c.stop()
    c.start()
    rest.setup()
    d, conf, serve, metrics = pgark_setup(base, c)
    started["serve"] = serve
    catalog = os.path.join(d, "catalog")

    wb.run(pgark(conf, "backup", SERVER, "--checkpoint", "fast"))
    wb.run(rest.cmd("--type=full", "backup"))
    print("backups taken", flush=True)
    wal_start, wal_end = rb.make_wal(c, args.wal_gb)
    rb.wait_pgark_flushed(metrics, wal_end)
    rb.wait_archived(c)
    wait_pgark_compressed(catalog)
    wal_gb = (wal_end - wal_start) / 1e9
    print(f"WAL written after the backups: {wal_gb:.2f} GB", flush=True)
    # Static from here: the same catalog and repo in every round.
    serve.terminate()
    serve.wait(timeout=60)
    c.stop()
    catalog_bytes = du_bytes(os.path.join(catalog, SERVER))
    repo_bytes = du_bytes(rest.repo)
    repo_wal = du_bytes(os.path.join(rest.repo, "archive"))
    cat_wal = du_bytes(os.path.join(catalog, SERVER, "wal"))
    print(f"pgark catalog {catalog_bytes / 1e6:.1f} MB (WAL {cat_wal / 1e6:.1f} MB); pgBackRest repo {repo_bytes / 1e6:.1f} MB "
          f"(archive {repo_wal / 1e6:.1f} MB)", flush=True)

    ver = {t: [] for t in TOOLS}
    drill = {t: [] for t in TOOLS}
    rest_text = ""
    for r in range(args.rounds):
        order = TOOLS if r % 2 == 0 else TOOLS[::-1]
        for tool in order:
            cold()
            if tool == "pgark":
                res = pgark_verify(conf)
            else:
                res = pgbackrest_verify(rest, repo_bytes)
                rest_text = res.pop("text")
            res["gb_s"] = res["bytes"] / 1e9 / res["seconds"]
            ver[tool].append(res)
            print(f"verify round {r + 1} {tool:>10}: {res['seconds']:6.2f}s {res['gb_s']:5.2f} GB/s ({res['bytes'] / 1e6:.0f} MB) "
                  f"rss {res['rss'] / 1e6:6.1f} MB cpu {res['cpu']:5.1f}s "
                  f"{'segments ' + str(res['segments']) + ' files ' + str(res['files'])}"
                  f"{' (own seconds %.2f)' % res['own_seconds'] if 'own_seconds' in res else ''}", flush=True)
        for tool in order:
            cold()
            res = pgark_drill(conf) if tool == "pgark" else pgbackrest_drill(base, rest)
            drill[tool].append(res)
            print(f"drill round {r + 1} {tool:>10}: restore {res['restore']:6.1f}s recovery {res['recovery']:6.1f}s "
                  f"total {res['total']:6.1f}s{' (command %.1fs)' % res['wall'] if 'wall' in res else ''} replay_lsn {res['replay_lsn']}", flush=True)
    print("pgbackrest verify output (last round):\n" + rest_text, flush=True)
    return report(args, size, wal_gb, catalog_bytes, cat_wal, repo_bytes, repo_wal, ver, drill)


def report(args, size, wal_gb, catalog_bytes, cat_wal, repo_bytes, repo_wal, ver, drill):
    med = lambda rs, k: statistics.median(x[k] for x in rs)  # noqa: E731
    pgv = wb.run([f"{wb.BIN}/postgres", "--version"]).stdout.split()[2]
    lines = [START, "", "## Verify and restore drills", ""]
    w = lines.append
    w(f"Generated by `python3 bench/verify_drill_bench.py --scale {args.scale} --rounds {args.rounds} --wal-gb {args.wal_gb}` on "
      f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {pgv}, {wb.run([wb.PGARK, '--version']).stdout.strip()}, "
      f"{wb.run(['pgbackrest', 'version']).stdout.strip()}; database {size / 1e9:.2f} GB (pgbench), one backup by each tool "
      f"then {wal_gb:.2f} GB of WAL (md5 text rows); primary and `pgark serve` stopped before the rounds; tools interleaved, "
      f"the first alternating; {'page cache NOT dropped' if DROP_NOTE else 'page cache dropped before every command'}; medians.")
    w("")
    w(f"Stored: pgark catalog {catalog_bytes / 1e6:.1f} MB on disk (WAL {cat_wal / 1e6:.1f} MB); pgBackRest repo "
      f"{repo_bytes / 1e6:.1f} MB (archive {repo_wal / 1e6:.1f} MB).")
    w("")
    w("| verify | seconds | GB/s of stored bytes read | speed vs pgBackRest | peak RSS MB | CPU s |")
    w("|---|---|---|---|---|---|")
    p, b = ver["pgark"], ver["pgbackrest"]
    w(f"| pgark verify --all ({med(p, 'bytes') / 1e6:.0f} MB bytes_checked, {p[0]['chunks']} chunks, {p[0]['segments']} WAL segments; "
      f"own seconds {med(p, 'own_seconds'):.2f}) | {med(p, 'seconds'):.2f} | {med(p, 'gb_s'):.2f} | {med(b, 'seconds') / med(p, 'seconds'):.2f} | "
      f"{med(p, 'rss') / 1e6:.1f} | {med(p, 'cpu'):.1f} |")
    w(f"| pgbackrest verify, process-max=2 (repo {repo_bytes / 1e6:.0f} MB, {b[0]['files']} backup files, {b[0]['segments']} WAL segments) | "
      f"{med(b, 'seconds'):.2f} | {med(b, 'gb_s'):.2f} | 1.00 | {med(b, 'rss') / 1e6:.1f} | {med(b, 'cpu'):.1f} |")
    w("")
    w("| drill (restore to the end of WAL, start, recover) | restore s | recovery s | total s (RTO) | RTO vs pgBackRest | whole command s |")
    w("|---|---|---|---|---|---|")
    p, b = drill["pgark"], drill["pgbackrest"]
    w(f"| pgark drill (then checks: {', '.join(p[0]['checks'])}) | {med(p, 'restore'):.1f} | {med(p, 'recovery'):.1f} | {med(p, 'total'):.1f} | "
      f"{med(p, 'total') / med(b, 'total'):.2f} | {med(p, 'wall'):.1f} |")
    w(f"| pgbackrest restore (process-max=2) + pg_ctl start + poll, by hand | {med(b, 'restore'):.1f} | {med(b, 'recovery'):.1f} | "
      f"{med(b, 'total'):.1f} | 1.00 | |")
    w("")
    w(f"Recovery ended at replay LSN {p[-1]['replay_lsn']} (pgark drill) and {b[-1]['replay_lsn']} (pgBackRest), WAL from each tool's own backup.")
    w("")
    w("RTO vs pgBackRest below 1.00 means pgark's drill recovered sooner. \"whole command\" is `pgark drill`'s wall time including its checks, "
      "stop and removal. Per-round numbers are in the script's output.")
    w("")
    w(END)
    return "\n".join(lines)


def write_section(path, section):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    elif "## Build comparison" in text:
        head, tail = text.split("## Build comparison", 1)
        text = head + section + "\n\n## Build comparison" + tail
    else:
        text += "\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
