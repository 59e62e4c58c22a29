#!/usr/bin/env python3
"""What an idle pgark costs when its catalog is large: two builds side by side, one daemon at a
time, alternating round by round.

Setup per round (fresh catalog, fresh repository prefix): one PostgreSQL 15 whose WAL starts at
segment N+2 (pg_resetwal -l), `pgark serve` streaming it asynchronously with one S3 repository
(SeaweedFS on loopback, credentials checked). Once streaming, N compressed segments (copies of one
real `.zst` the daemon archived, named 1..N on timeline 1) are put into the catalog's WAL
directory, as a catalog that keeps a week of WAL would hold. The daemon uploads them; once its
off-site queue is empty and the catalog quiet, the daemon's CPU time is sampled from /proc over
`--seconds`: the idle cost of the uploader's passes (every 250 ms), the continuity index (every
15 s) and the usage walk (every minute), with nothing to do.

Usage: python3 bench/idle_catalog_bench.py OLD_BIN NEW_BIN [--segments 10000] [--seconds 30]
       [--rounds 2] [--out BENCHMARKS.md]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import s3_bench as s3  # noqa: E402
import wal_bench as wb  # noqa: E402

START = "<!-- idle-catalog-bench:start -->"
END = "<!-- idle-catalog-bench:end -->"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seg_name(tli, segno):
    return f"{tli:08X}{segno >> 8:08X}{segno & 0xFF:08X}"


def one_run(base, label, binary, sw, segments, seconds, run_no):
    os.environ["PGARK_BIN"] = binary
    wb.PGARK = binary
    name = "".join(ch if ch.isalnum() else "-" for ch in label) + f"-{run_no}"
    c = wb.Cluster(base, f"pg-{name}")
    c.initdb("wal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4")
    wb.run(wb.owner_cmd([f"{wb.BIN}/pg_resetwal", "-l", seg_name(1, segments + 2), "-f", c.data]))
    c.start()
    p = s3.Pgark(base, f"pgark-{name}", c, sw, f"idle-{name}", "pgark_bench", encrypt=False, http=True)
    try:
        p.start()
        wal = os.path.join(p.dir, "catalog", "bench", "wal")
        c.psql("SELECT pg_switch_wal()")
        c.psql("CREATE TABLE t AS SELECT 1")
        c.psql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        sample = None
        while sample is None and time.monotonic() < deadline:
            sample = next((f for f in os.listdir(wal) if f.endswith(".zst")), None)
            time.sleep(0.2)
        if sample is None:
            sys.exit(f"no compressed segment in {wal}")
        src = os.path.join(wal, sample)
        t0 = time.monotonic()
        for segno in range(1, segments + 1):
            os.link(src, os.path.join(wal, seg_name(1, segno) + ".zst"))
        print(f"  {label}: {segments} segments in the catalog; waiting for the upload", flush=True)
        deadline = time.monotonic() + 1800
        while True:
            o = p.offsite(p.status()) or {}
            if o.get("queued_objects") == 0 and (o.get("uploaded_objects_total") or 0) >= segments:
                break
            if time.monotonic() > deadline:
                sys.exit(f"{label}: the upload did not finish: {o}")
            time.sleep(1)
        upload = time.monotonic() - t0
        time.sleep(5)  # the last marks and walks
        pid = p.serve.pid
        before, t = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(pid) - before
        pct = 100.0 * used / (time.monotonic() - t)
        print(f"  {label}: idle CPU {pct:.2f}% of one core (upload of {segments} took {upload:.0f} s)", flush=True)
        return {"idle_cpu_pct": pct, "upload_s": upload}
    finally:
        p.stop()
        c.stop()
        shutil.rmtree(c.dir, ignore_errors=True)
        shutil.rmtree(p.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--segments", type=int, default=10000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--old-label", default="before")
    ap.add_argument("--new-label", default="after")
    ap.add_argument("--out")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="pgark-idle-")
    os.chmod(base, 0o755)
    sw = s3.Seaweed(base)
    results = {args.old_label: [], args.new_label: []}
    try:
        for r in range(args.rounds):
            order = [(args.old_label, args.old), (args.new_label, args.new)]
            if r % 2:
                order.reverse()
            for label, binary in order:
                results[label].append(one_run(base, label, binary, sw, args.segments, args.seconds, r))
    finally:
        sw.stop()
        shutil.rmtree(base, ignore_errors=True)
    med = {k: statistics.median(x["idle_cpu_pct"] for x in v) for k, v in results.items()}
    rows = "\n".join(
        f"| {k} | {med[k]:.2f} | {', '.join('%.2f' % x['idle_cpu_pct'] for x in v)} | "
        f"{statistics.median(x['upload_s'] for x in v):.0f} |"
        for k, v in results.items()
    )
    ratio = med[args.old_label] / med[args.new_label] if med[args.new_label] > 0 else float("inf")
    section = f"""{START}

## An idle daemon with a large catalog

Generated by `python3 bench/idle_catalog_bench.py OLD NEW --segments {args.segments} --seconds {args.seconds} --rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}, 2 cores: one server streaming asynchronously, one S3 repository (SeaweedFS, loopback, HTTP), {args.segments} compressed segments in the local catalog, all uploaded; then nothing to do. CPU of the daemon over {args.seconds} s (utime + stime from /proc), median of {args.rounds} rounds, builds alternating.

| build | idle CPU % of one core (median) | each round | upload of the segments, s |
|---|---|---|---|
{rows}

The idle daemon costs {ratio:.1f}x less CPU with `{args.new_label}` than with `{args.old_label}`.

{END}"""
    print(section)
    if args.out:
        text = open(args.out).read() if os.path.exists(args.out) else ""
        if START in text and END in text:
            text = text[: text.index(START)] + section + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
