//! Property tests of every parser of untrusted input: the backend message codec, the replication
//! payloads, the BASE_BACKUP reply, the tar parser, the backup_manifest, connection strings and
//! `.pgpass`, the config file, and every catalog file loader (state file, backup index, restore
//! record, stored segments and chunks, `.sum` files, timeline histories, WAL file names), and
//! what `pgark verify` reads (its manifest parser, the WAL page-header checker, verify results).
//!
//! Each gets random inputs and mutations of valid ones (bit flips, overwrites, insertions,
//! deletions, truncation): `PGARK_PROPTEST_CASES` cases each (100,000 by default; CI runs the
//! default). A case passes when the parser returns (a value or an error) without panicking,
//! within the time limit of the whole run (a hang fails it), and without any single allocation
//! larger than the parser's documented bound (a counting global allocator sees every request).

use pgark::backup::manifest::Manifest;
use pgark::backup::tar::TarParser;
use pgark::catalog::segment_file;
use pgark::client::conninfo::{pgpass_find, ConnInfo};
use pgark::protocol::backend;
use pgark::protocol::basebackup::BaseBackupReader;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

/// Tracks the largest single allocation request made on this thread since the last reset.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn cases() -> u32 {
    std::env::var("PGARK_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// A mutation applied to a valid sample.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, 1 << b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Mutation::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(sample: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut v = sample.to_vec();
    for m in muts {
        let len = v.len().max(1);
        match m {
            Mutation::Flip(i, b) if !v.is_empty() => v[i % len] ^= b,
            Mutation::Set(i, b) if !v.is_empty() => v[i % len] = *b,
            Mutation::Insert(i, bytes) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Mutation::Delete(i, n) if !v.is_empty() => {
                let at = i % len;
                let end = (at + n).min(v.len());
                v.drain(at..end);
            }
            Mutation::Truncate(i) => v.truncate(i % (v.len() + 1)),
            _ => {}
        }
    }
    v
}

/// Random bytes, or one of `samples` mutated.
fn input(samples: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = samples.len();
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        4 => (0..n, proptest::collection::vec(mutation(), 1..6)).prop_map(move |(i, m)| apply(&samples[i], &m)),
    ]
}

/// Runs `check` on `cases()` inputs; fails on a panic or an allocation above `bound(input)`.
fn run(name: &str, samples: Vec<Vec<u8>>, bound: impl Fn(&[u8]) -> usize, check: impl Fn(&[u8])) {
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(),
        failure_persistence: None,
        ..PtConfig::default()
    });
    let started = std::time::Instant::now();
    let result = runner.run(&input(samples), |data| {
        LARGEST.with(|l| l.set(0));
        check(&data);
        let largest = LARGEST.with(|l| l.get());
        let limit = bound(&data);
        prop_assert!(
            largest <= limit,
            "{name}: an allocation of {largest} bytes for {} input bytes (bound {limit})",
            data.len()
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!("{name}: {} cases in {:?}", cases(), started.elapsed());
}

/// Generous fixed part of every bound: small tables, error strings, serde scratch space.
const BASE: usize = 256 * 1024;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn backend_samples() -> Vec<Vec<u8>> {
    let mut row = 2u16.to_be_bytes().to_vec();
    for val in ["6543210987654321", "1"] {
        row.extend_from_slice(&(val.len() as i32).to_be_bytes());
        row.extend_from_slice(val.as_bytes());
    }
    let mut desc = 1u16.to_be_bytes().to_vec();
    desc.extend_from_slice(b"systemid\0");
    desc.extend_from_slice(&[0u8; 18]);
    let mut xlog = vec![b'w'];
    xlog.extend_from_slice(&0x3000000u64.to_be_bytes());
    xlog.extend_from_slice(&0x3000100u64.to_be_bytes());
    xlog.extend_from_slice(&0i64.to_be_bytes());
    xlog.extend_from_slice(&[7u8; 64]);
    let mut keep = vec![b'k'];
    keep.extend_from_slice(&0x3000100u64.to_be_bytes());
    keep.extend_from_slice(&0i64.to_be_bytes());
    keep.push(1);
    vec![
        [frame(b'R', &0u32.to_be_bytes()), frame(b'Z', b"I")].concat(),
        frame(
            b'R',
            &[
                0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6', 0, 0,
            ],
        ),
        frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]),
        [frame(b'T', &desc), frame(b'D', &row), frame(b'C', b"SELECT 1\0")].concat(),
        frame(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"),
        frame(b'S', b"server_version\x0015.4\0"),
        frame(b'd', &xlog),
        frame(b'd', &keep),
        frame(b'c', b""),
        frame(b'W', &[0, 0, 0]),
    ]
}

#[test]
fn backend_codec_and_replication_payloads() {
    run(
        "backend::parse + replication::decode",
        backend_samples(),
        |d| d.len() * 2 + (1 << 20) + BASE,
        |d| {
            let mut buf = bytes::BytesMut::from(d);
            while let Ok(Some(m)) = backend::parse(&mut buf) {
                if let backend::BackendMessage::CopyData(payload) = m {
                    let _ = pgark::protocol::replication::decode(payload);
                }
            }
        },
    );
}

#[test]
fn base_backup_reply() {
    let mut samples = backend_samples();
    let mut start_row = 2u16.to_be_bytes().to_vec();
    for val in ["0/2000028", "1"] {
        start_row.extend_from_slice(&(val.len() as i32).to_be_bytes());
        start_row.extend_from_slice(val.as_bytes());
    }
    samples.push(
        [
            frame(
                b'T',
                &[
                    0, 2, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0,
                ],
            ),
            frame(b'D', &start_row),
            frame(b'C', b"SELECT\0"),
            frame(b'H', &[0, 0, 0]),
            frame(b'd', b"n\0\0"),
            frame(b'd', &[b'd', 1, 2, 3]),
            frame(b'd', b"m"),
            frame(b'c', b""),
            frame(b'C', b"BASE_BACKUP\0"),
            frame(b'Z', b"I"),
        ]
        .concat(),
    );
    for version in [130_000u32, 150_000] {
        run(
            &format!("BaseBackupReader ({version})"),
            samples.clone(),
            |d| d.len() * 2 + (1 << 20) + BASE,
            |d| {
                let mut buf = bytes::BytesMut::from(d);
                let mut reader = BaseBackupReader::new(version);
                while let Ok(Some(m)) = backend::parse(&mut buf) {
                    if reader.on_message(m).is_err() || reader.is_finished() {
                        break;
                    }
                }
            },
        );
    }
}

fn tar_header(name: &str, kind: u8, size: u64) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000600\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[test]
fn tar_stream() {
    let mut archive = tar_header("base/1/1234", b'0', 700);
    archive.extend(vec![9u8; 700]);
    archive.extend(vec![0u8; 1024 - 700]);
    archive.extend(tar_header("pg_wal", b'5', 0));
    archive.extend(tar_header("pg_tblspc/16384", b'2', 0));
    archive.extend(vec![0u8; 1024]);
    run(
        "TarParser",
        vec![archive],
        |d| d.len() * 2 + BASE,
        |d| {
            let mut p = TarParser::new();
            let mut sink = |_: pgark::backup::tar::TarEvent<'_>| -> Result<(), pgark::backup::tar::TarError> { Ok(()) };
            if p.push(d, &mut sink).is_ok() {
                let _ = p.finish();
            }
        },
    );
}

fn manifest_sample() -> Vec<u8> {
    use sha2::Digest;
    let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7311234567890123456,\n\"Files\": [\n{ \"Path\": \"base/1/1234\", \"Size\": 700, \"Last-Modified\": \"2026-11-23 10:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"0a0b0c0d\" }\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n";
    let sum = sha2::Sha256::digest(body.as_bytes());
    let hex: String = sum.iter().map(|b| format!("{b:02x}")).collect();
    format!("{body}\"Manifest-Checksum\": \"{hex}\"}}\n").into_bytes()
}

#[test]
fn backup_manifest() {
    run(
        "Manifest::parse",
        vec![manifest_sample()],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = Manifest::parse(d);
        },
    );
}

#[test]
fn connection_strings_and_pgpass() {
    let samples: Vec<Vec<u8>> = [
        "host=db port=5432 user=rep password='a b\\'c' sslmode=verify-full application_name=x connect_timeout=5 keepalives_idle=9",
        "postgresql://rep:s%40cret@[::1]:5433/postgres?sslmode=require&application_name=x&channel_binding=require",
        "postgres://u@%2Ftmp%2Fsock:5999/db?tcp_user_timeout=100",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run(
        "ConnInfo::parse",
        samples,
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = ConnInfo::parse(&String::from_utf8_lossy(d));
        },
    );
    run(
        ".pgpass",
        vec![b"# c\nlocalhost:5432:replication:rep:pa\\:ss\n*:*:*:*:fallback:with:colons\nh\\\\x:1:d:u\n".to_vec()],
        |d| d.len() * 8 + BASE,
        |d| {
            let _ = pgpass_find(&String::from_utf8_lossy(d), "localhost", 5432, "replication", "rep");
        },
    );
}

#[test]
fn config_file() {
    let sample = include_str!("../config.example.yaml").as_bytes().to_vec();
    let small = b"catalog: /x\ncatalog_group: '0'\nmetrics:\n  listen: 127.0.0.1:9\n  healthz_stream_timeout: 30s\ndisk_pressure:\n  catalog_free_warning: 20GiB\n  catalog_free_critical: 2%\nservers:\n  main:\n    conninfo: host=/tmp\n    backup_schedule: 0 3 * * *\n    backup_min_free: 1GiB\n    slot_retained_limit: 10GiB\n".to_vec();
    run(
        "Config::parse",
        vec![sample, small],
        |d| d.len() * 64 + (1 << 20),
        |d| {
            let _ = pgark::config::Config::parse(&String::from_utf8_lossy(d), Path::new("fuzz.yaml"));
        },
    );
}

/// Eight 1 KiB WAL pages of one small "segment" (the checker takes any page and segment size
/// the long header declares), valid for `verify::page::check_segment`.
fn wal_pages_sample() -> Vec<u8> {
    let mut d = vec![0u8; 8 * 1024];
    for (i, page) in d.chunks_mut(1024).enumerate() {
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&(if i == 0 { 6u16 } else { 4 }).to_le_bytes());
        page[4..8].copy_from_slice(&1u32.to_le_bytes());
        page[8..16].copy_from_slice(&(0x30000u64 + (i as u64) * 1024).to_le_bytes());
        if i == 0 {
            page[24..32].copy_from_slice(&7u64.to_le_bytes());
            page[32..36].copy_from_slice(&8192u32.to_le_bytes());
            page[36..40].copy_from_slice(&1024u32.to_le_bytes());
        }
    }
    d
}

#[test]
fn verify_inputs() {
    use pgark::verify::page::{check_segment, Expect, Kind};
    use pgark::verify::record::VerifyRecord;
    let expect = Expect {
        magic: Some(0xD110),
        tli: pgark::pg::TimelineId(1),
        start: pgark::pg::Lsn(0x30000),
        seg_size: 8192,
        system_identifier: Some(7),
    };
    assert!(check_segment(&wal_pages_sample(), &expect, Kind::Complete).is_ok());
    run(
        "verify::page::check_segment",
        vec![wal_pages_sample()],
        |_| BASE,
        |d| {
            let _ = check_segment(d, &expect, Kind::Complete);
            let _ = check_segment(d, &expect, Kind::Partial);
        },
    );
    run(
        "verify::manifest::parse",
        vec![manifest_sample()],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = pgark::verify::manifest::parse(d);
        },
    );
    let record = br#"{"format":1,"backup":"20261202T101500Z","verified_at":1796206600,"status":"damaged","problem_count":1,"problems":[{"subject":"wal","object":"000000010000000000000007","message":"missing from the catalog"}],"unreachable":["x"],"bytes_checked":5,"seconds":0.5}"#;
    run(
        "verify::record (VerifyRecord JSON)",
        vec![record.to_vec()],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = serde_json::from_slice::<VerifyRecord>(d);
        },
    );
}

#[test]
fn catalog_file_loaders() {
    use pgark::catalog::state;
    use pgark::pg::{Lsn, TimelineId};
    let st = state::encode(&state::ServerState {
        system_identifier: 7311234567890123456,
        wal_segment_size: 16 << 20,
        server_version_num: 150004,
        timeline: TimelineId(2),
        flushed_lsn: Lsn(0x3000028),
        updated_at: 1,
    });
    run(
        "state::decode",
        vec![st],
        |d| d.len() * 8 + BASE,
        |d| {
            let _ = state::decode("main/server.state", d);
        },
    );

    let mut stored = Vec::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    segment_file::compress_into(&data, 1, &mut stored).unwrap();
    // Decompression may allocate up to the size the header claims, itself capped by what the
    // compressed bytes can expand to (zstd: 128 KiB per 4 input bytes at most).
    run(
        "segment_file::decompress",
        vec![stored],
        |d| d.len().saturating_mul(32 * 1024) + (1 << 20) + BASE,
        |d| {
            let _ = segment_file::decompress(d);
            let _ = segment_file::read_header(d);
        },
    );
    run(
        ".sum files",
        vec![b"crc32c 0a0b0c0d size 16777216\n".to_vec()],
        |d| d.len() * 8 + BASE,
        |d| {
            let _ = segment_file::SegmentChecksum::from_sum_text(&String::from_utf8_lossy(d));
        },
    );
    run(
        "timeline history, WAL names, LSNs",
        vec![
            b"1\t0/3000000\tno recovery target specified\n2\t0/5000000\tbefore 2026\n".to_vec(),
            b"000000020000000A0000003F".to_vec(),
            b"16/B374D848".to_vec(),
        ],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = pgark::pg::TimelineHistory::parse(d);
            let text = String::from_utf8_lossy(d);
            let _ = pgark::pg::WalFileName::parse(&text, pgark::pg::WalSegSize::new(16 << 20).unwrap());
            let _ = text.parse::<Lsn>();
        },
    );

    let index = br#"{"format":1,"id":"20261123T231500Z","server":"main","label":"l","start_time":1,"end_time":2,"start_lsn":"0/2000028","end_lsn":"0/3000100","start_timeline":1,"end_timeline":1,"pg_version":150000,"system_identifier":"1","wal_segment_size":16777216,"from_standby":false,"checkpoint":"fast","wal_source":"catalog","compression":"zstd:3","original_bytes":10,"stored_new_bytes":5,"stored_total_bytes":5,"tablespaces":[{"oid":16384,"location":"/ts","estimated_bytes":null}],"files":[{"path":"base/1/1","kind":"file","mode":384,"mtime":0,"size":10,"crc32c":1,"stored_bytes":5,"chunks":[{"object":"aa/aa.zst","size":10,"stored":5,"blake3":"00"}]}]}"#.to_vec();
    pgark::catalog::backup_store::decode_index("k", "20261123T231500Z", &index).expect("the index sample must be valid");
    run(
        "backup index",
        vec![index],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = pgark::catalog::backup_store::decode_index("main/backups/x.json", "20261123T231500Z", d);
        },
    );
    let record = br#"{"format":1,"target_dir":"/srv/pg","backup_id":"x","written_at":1,"files":{"/srv/pg/base/1/1":{"identity":{"dev":1,"ino":2,"size":3,"mtime_ns":4,"ctime_ns":5},"chunks":[{"object":"aa/aa.zst","size":3,"crc32c":7}]}}}"#.to_vec();
    assert!(
        matches!(pgark::catalog::restore_record::decode(&record, Path::new("/srv/pg")), Ok(Some(_))),
        "the record sample must be valid"
    );
    run(
        "restore record",
        vec![record],
        |d| d.len() * 16 + BASE,
        |d| {
            let _ = pgark::catalog::restore_record::decode(d, Path::new("/srv/pg"));
        },
    );
}

/// A hang in any parser fails the run instead of blocking CI: each test above runs well under
/// this limit.
#[test]
fn watchdog_is_armed() {
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(900));
        eprintln!("a property test ran for 15 minutes: a parser hangs");
        std::process::exit(101);
    });
}

/// Encrypted objects come back from storage nobody vouches for (an S3 bucket): `open` on any
/// bytes, a sealed object with random damage included, returns an error or the plaintext, never
/// panics, and allocates in proportion to its input.
#[test]
fn encrypted_envelopes() {
    use pgark::catalog::encryption::{open, seal, Key, Keyring};
    let ring = Keyring::new(Key::from_bytes([7; 32]), vec![Key::from_bytes([9; 32])]);
    let sealed = seal(&ring, "main/chunks/ab/ab.zst", &[42u8; 300]).unwrap();
    assert_eq!(open(&ring, "main/chunks/ab/ab.zst", &sealed).unwrap(), vec![42u8; 300]);
    run(
        "encryption::open",
        vec![sealed],
        |d| d.len() * 4 + BASE,
        |d| {
            if let Ok(plain) = open(&ring, "main/chunks/ab/ab.zst", d) {
                // Authentication passed: only an untouched envelope does.
                assert_eq!(plain, vec![42u8; 300]);
            }
        },
    );
}
