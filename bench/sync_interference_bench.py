#!/usr/bin/env python3
"""What background I/O costs one synchronous acknowledgement, on this machine's disk.

A synchronous pgark acknowledges a commit after one small write and an fdatasync of its open WAL
segment (a preallocated file, written with O_DIRECT). This measures exactly that, an 8 KiB
O_DIRECT write + fdatasync every 2 ms, alone and beside one background I/O pattern at a time:

- `direct write`: O_DIRECT writes into a preallocated file (asynchronous receivers);
- `direct read`: O_DIRECT reads (the archiver reading a completed segment);
- `new file`: a new 5 MiB file written with O_DIRECT, fdatasynced, renamed, its directory
  fsynced (the archiver publishing a compressed segment);
- `page cache`: a new 5 MiB file written through the page cache, then fdatasynced;
- `page cache, written behind`: the same, with the writeback of each piece started as soon as
  it is written and the piece before it waited for (`sync_file_range`, as `fsio::write_behind`
  does for the catalog's backup chunks and large objects);
- `busy CPU, nice N`: no I/O at all, one spinning process per core at nice N (the catch-up's CPU
  work: the write + fdatasync's thread must get a core back when the disk is done; pgark runs
  its background threads at nice +10, `util::thread_priority`),

each at a given rate and request size. It explains two things in BENCHMARKS.md: why pgark sends
direct I/O in pieces of 256 KiB (`fsio::direct::PIECE`), and how far the tail of a synchronous
acknowledgement can be held while other servers' WAL moves at all (the pacing floor is 8 MB/s).
Runs in a temporary directory on the filesystem of --dir (default: the repository's). Usage:
  python3 bench/sync_interference_bench.py [--dir D] [--seconds 6] [--rounds 3] [--only NAME] [--out BENCHMARKS.md]
"""

import argparse
import ctypes
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## What background I/O costs a synchronous acknowledgement"
MB = 2**20


def aligned(size, fill):
    buf = mmap.mmap(-1, size)
    buf.write(fill * size)
    return buf


def preallocate(path, size):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    zeros = b"\0" * MB
    for _ in range(size // MB):
        os.write(fd, zeros)
    os.fsync(fd)
    os.close(fd)


class Paced:
    """Sleeps so that `rate` bytes per second are done on average."""

    def __init__(self, rate):
        self.rate, self.next = rate, time.perf_counter()

    def done(self, n):
        self.next += n / self.rate
        d = self.next - time.perf_counter()
        if d > 0:
            time.sleep(d)


def direct_write(d, stop, rate, piece):
    path = os.path.join(d, "bg-write")
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf, off, pace, size = aligned(piece, b"w"), 0, Paced(rate), 64 * MB
    while not stop.is_set():
        os.pwrite(fd, buf, off)
        off = (off + piece) % size
        if off == 0:
            os.fdatasync(fd)
        pace.done(piece)
    os.close(fd)


def direct_read(d, stop, rate, piece):
    fd = os.open(os.path.join(d, "bg-read"), os.O_RDONLY | os.O_DIRECT)
    buf, off, pace, size = aligned(piece, b"r"), 0, Paced(rate), 64 * MB
    while not stop.is_set():
        os.preadv(fd, [buf], off)
        off = (off + piece) % size
        pace.done(piece)
    os.close(fd)


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SFR_WAIT_BEFORE, SFR_WRITE, SFR_WAIT_AFTER = 1, 2, 4


def sync_file_range(fd, off, n, flags):
    if LIBC.sync_file_range(fd, off, n, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def new_file(d, stop, rate, piece, direct=True, behind=False):
    size, i, pace = 5 * MB, 0, Paced(rate)
    buf = aligned(piece, b"n")
    while not stop.is_set():
        tmp = os.path.join(d, "bg-new.tmp")
        flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC | (os.O_DIRECT if direct else 0)
        fd = os.open(tmp, flags, 0o644)
        off = 0
        while off < size and not stop.is_set():
            os.pwrite(fd, buf, off)
            if behind:
                sync_file_range(fd, off, piece, SFR_WRITE)
                if off >= piece:
                    sync_file_range(fd, off - piece, piece, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)
            off += piece
            pace.done(piece)
        os.fdatasync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(d, f"bg-new-{i % 8}"))
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        i += 1


def busy_cpu(d, stop, nice):
    procs = [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count() or 2)]
    stop.wait()
    for p in procs:
        p.kill()
        p.wait()


PATTERNS = {
    "direct write": direct_write,
    "direct read": direct_read,
    "new file": new_file,
    "page cache": lambda d, stop, rate, piece: new_file(d, stop, rate, piece, direct=False),
    "page cache, written behind": lambda d, stop, rate, piece: new_file(d, stop, rate, piece, direct=False, behind=True),
    "busy CPU, nice 0": lambda d, stop, rate, piece: busy_cpu(d, stop, 0),
    "busy CPU, nice 10": lambda d, stop, rate, piece: busy_cpu(d, stop, 10),
}


def measure(d, seconds, pattern=None, rate=0, piece=0):
    """Percentiles (seconds) of the synchronous write + fdatasync while `pattern` runs at `rate`
    MB/s in requests of `piece` bytes."""
    fd = os.open(os.path.join(d, "sync"), os.O_WRONLY | os.O_DIRECT)
    buf, off, lat = aligned(8192, b"s"), 0, []
    stop = threading.Event()
    bg = None
    if pattern:
        bg = threading.Thread(target=PATTERNS[pattern], args=(d, stop, rate * MB, piece))
        bg.start()
        time.sleep(0.5)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        os.pwrite(fd, buf, off)
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        off = (off + 8192) % (16 * MB)
        time.sleep(0.002)
    stop.set()
    if bg:
        bg.join()
    os.close(fd)
    lat.sort()
    return {q: lat[min(len(lat) - 1, int(len(lat) * q))] for q in (0.5, 0.9, 0.99)}


CASES = [
    ("direct read", 300, 16 * MB),
    ("direct read", 300, 256 << 10),
    ("direct write", 150, MB),
    ("direct write", 150, 256 << 10),
    ("page cache", 150, 256 << 10),
    ("page cache, written behind", 150, 256 << 10),
    ("page cache", 40, 256 << 10),
    ("page cache, written behind", 40, 256 << 10),
    ("new file", 150, 256 << 10),
    ("direct write", 8, 256 << 10),
    ("new file", 8, 256 << 10),
    ("direct write", 32, 256 << 10),
    ("busy CPU, nice 0", 0, 0),
    ("busy CPU, nice 10", 0, 0),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=ROOT, help="a directory on the filesystem to measure")
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", help="only the patterns whose name contains this (and alone)")
    ap.add_argument("--out")
    args = ap.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c[0]]
    d = tempfile.mkdtemp(prefix="pgark-interference-", dir=args.dir)
    try:
        preallocate(os.path.join(d, "sync"), 16 * MB)
        for name in ("bg-write", "bg-read"):
            preallocate(os.path.join(d, name), 64 * MB)
        results = {}
        for r in range(args.rounds):
            for case in [None] + cases:
                q = measure(d, args.seconds, *(case or ()))
                results.setdefault(case, []).append(q)
                label = "alone" if case is None else f"{case[0]} {case[1]} MB/s in {case[2] // 1024} KiB" if case[1] else case[0]
                print(f"round {r + 1}: {label}: p50 {q[0.5] * 1e3:.3f} p99 {q[0.99] * 1e3:.3f} ms", flush=True)
        text = report(results, args)
        print(text)
        if args.out:
            write_section(args.out, text)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def report(results, args):
    med = {c: {q: statistics.median(r[q] for r in rs) for q in (0.5, 0.9, 0.99)} for c, rs in results.items()}
    alone = med[None]
    lines = [
        SECTION,
        "",
        f"Generated by `python3 bench/sync_interference_bench.py --rounds {args.rounds} --seconds {args.seconds:g}` on "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores. What a synchronous acknowledgement costs pgark on "
        "this disk (an 8 KiB O_DIRECT write + fdatasync of a preallocated file, every 2 ms), alone and beside "
        "one background pattern; medians of the rounds' percentiles. Alone, round by round, p99: "
        + ", ".join(f"{r[0.99] * 1e3:.2f}" for r in results[None])
        + " ms.",
        "",
        "| beside | MB/s | request | p50 ms | p90 ms | p99 ms | p50 / alone | p99 / alone |",
        "|---|---|---|---|---|---|---|---|",
        f"| nothing | | | {alone[0.5] * 1e3:.3f} | {alone[0.9] * 1e3:.3f} | {alone[0.99] * 1e3:.3f} | 1.00x | 1.00x |",
    ]
    for case in [c for c in CASES if c in med]:
        m = med[case]
        rate, request = (case[1], f"{case[2] // 1024} KiB") if case[1] else ("", "")
        lines.append(
            f"| {case[0]} | {rate} | {request} | {m[0.5] * 1e3:.3f} | {m[0.9] * 1e3:.3f} | "
            f"{m[0.99] * 1e3:.3f} | {m[0.5] / alone[0.5]:.2f}x | {m[0.99] / alone[0.99]:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def write_section(path, text, title=SECTION):
    """Replaces the section `title` of `path` (up to the next `## `) with `text`, or appends it."""
    old = open(path).read() if os.path.exists(path) else ""
    start = old.find(title)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(title))
        new = old[:start] + text + (old[end:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    sys.exit(main())
