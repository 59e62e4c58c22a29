//! Catalog files written by pgark's first on-disk formats (index format 1, server.state
//! version 1, restore record format 1, drill record format 1, verify result format 1) still load.
//! The fixtures below are the exact bytes
//! today's pgark writes; a change to a type that breaks them fails here, not in a DBA's catalog.

use pgark::catalog::backup_store::{decode_index, FileKind, WalSource};
use pgark::catalog::{drill_record, restore_record, state};
use pgark::pg::{Lsn, TimelineId};

/// A backup index as `pgark backup` writes it (compact JSON; one file of each kind, a
/// tablespace with and one without a name, a chunk with and one without a BLAKE3).
const INDEX_V1: &str = r#"{"format":1,"id":"20261202T101500Z","server":"main","label":"nightly","start_time":1796206500,"end_time":1796206560,"start_lsn":"0/2000028","end_lsn":"0/3000100","start_timeline":1,"end_timeline":2,"pg_version":150018,"system_identifier":"7443112233445566778","wal_segment_size":16777216,"from_standby":false,"checkpoint":"fast","wal_source":"catalog","compression":"zstd:3","original_bytes":8200,"stored_new_bytes":300,"stored_total_bytes":400,"tablespaces":[{"oid":null,"location":null,"estimated_bytes":8192},{"oid":16390,"location":"/srv/ts1","estimated_bytes":8,"name":"fast"}],"files":[{"path":"base","kind":"directory","mode":448,"mtime":1796206400,"size":0,"stored_bytes":0},{"path":"base/1/1259","kind":"file","mode":384,"mtime":1796206401,"size":8192,"crc32c":305419896,"stored_bytes":300,"chunks":[{"object":"ab/abcdef.zst","size":4096,"stored":100,"blake3":"00ff"},{"object":"cd/cdef01.zst","size":4096,"stored":200}]},{"path":"pg_tblspc/16390","kind":"symlink","mode":511,"mtime":1796206402,"size":0,"stored_bytes":0,"link_target":"/srv/ts1"}]}"#;

#[test]
fn a_format_1_backup_index_loads() {
    let idx = decode_index("main/backups/20261202T101500Z.json", "20261202T101500Z", INDEX_V1.as_bytes()).unwrap();
    assert_eq!(idx.format, 1);
    assert_eq!((idx.start_lsn, idx.end_lsn), (Lsn(0x2000028), Lsn(0x3000100)));
    assert_eq!((idx.start_timeline, idx.end_timeline), (TimelineId(1), TimelineId(2)));
    assert_eq!(idx.wal_source, WalSource::Catalog);
    assert_eq!(
        idx.files.iter().map(|f| f.kind).collect::<Vec<_>>(),
        [FileKind::Directory, FileKind::File, FileKind::Symlink]
    );
    assert_eq!(idx.files[1].crc32c, Some(0x12345678));
    assert_eq!(idx.files[1].chunks[0].blake3.as_deref(), Some("00ff"));
    assert_eq!(idx.files[1].chunks[1].blake3, None);
    assert_eq!(idx.tablespaces[1].name.as_deref(), Some("fast"));
    assert_eq!(idx.tablespaces[0].name, None);
    assert_eq!(idx.required_wal().len(), 2);
    // Written back, it is the same document (no field renamed or dropped).
    let again: serde_json::Value = serde_json::to_value(&idx).unwrap();
    let original: serde_json::Value = serde_json::from_str(INDEX_V1).unwrap();
    assert_eq!(again, original);
    // Optional fields written out as null or empty (by hand, or an older writer) load too.
    let explicit = INDEX_V1.replacen("\"stored_bytes\":0}", "\"stored_bytes\":0,\"link_target\":null,\"chunks\":[]}", 1);
    assert_ne!(explicit, INDEX_V1);
    decode_index("k", "20261202T101500Z", explicit.as_bytes()).unwrap();
    // Another format is refused with a message naming it.
    let v2 = INDEX_V1.replacen("\"format\":1", "\"format\":2", 1);
    let e = decode_index("k", "20261202T101500Z", v2.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("format 2"), "{e}");
}

/// `server.state` version 1: magic `PGARKST\0`, u32 version, u32 CRC-32C of the payload, u32
/// payload length (all little-endian), then the JSON payload.
#[test]
fn a_version_1_server_state_loads() {
    let payload = br#"{"system_identifier":7443112233445566778,"wal_segment_size":16777216,"server_version_num":150018,"timeline":3,"flushed_lsn":"1/A0000000","updated_at":1796206500}"#;
    let mut bytes = b"PGARKST\0".to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    let st = state::decode("main/server.state", &bytes).unwrap();
    assert_eq!(st.system_identifier, 7443112233445566778);
    assert_eq!(st.timeline, TimelineId(3));
    assert_eq!(st.flushed_lsn, Lsn(0x1_A000_0000));
    // Today's encoder writes exactly these bytes.
    assert_eq!(state::encode(&st), bytes);
}

#[test]
fn a_format_1_restore_record_loads() {
    let text = r#"{"format":1,"target_dir":"/srv/restore","backup_id":"20261202T101500Z","written_at":1796206600,"files":{"/srv/restore/base/1/1259":{"identity":{"dev":2049,"ino":131,"size":8192,"mtime_ns":1796206600000000000,"ctime_ns":1796206600000000000},"chunks":[{"object":"ab/abcdef.zst","size":4096,"crc32c":1},{"object":"cd/cdef01.zst","size":4096,"crc32c":2}]}}}"#;
    let r = restore_record::decode(text.as_bytes(), std::path::Path::new("/srv/restore"))
        .unwrap()
        .unwrap();
    assert_eq!(r.backup_id, "20261202T101500Z");
    assert_eq!(r.files.len(), 1);
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::from_str::<serde_json::Value>(text).unwrap()
    );
}

/// A drill record as `pgark drill` writes it (`<server>/drills/<start>.json`): a failed drill
/// with a check of each kind.
const DRILL_V1: &str = r#"{"format":1,"server":"main","started_at":1796276288,"finished_at":1796276290,"success":false,"failed_step":"sql","error":"sql[0]: SELECT 1 WHERE false: returned no row","log_tail":"LOG:  database system is ready to accept connections","backup_id":"20261203T053805Z","target":"end of WAL","pg_major":15,"pg_bindir":"/usr/lib/postgresql/15/bin","recovered":{"replay_lsn":"0/4000000","timeline":2,"last_commit_time":"2026-12-03 05:38:06.51706+00"},"checks":[{"name":"connect postgres","ok":true,"detail":"SELECT 1 ok","skipped":false},{"name":"pg_amcheck","ok":true,"detail":"skipped: not found","skipped":true},{"name":"sql[0]","ok":false,"detail":"SELECT 1 WHERE false: returned no row","skipped":false}],"restore_seconds":0.6,"recovery_seconds":0.5,"total_seconds":1.2,"scratch_dir":"/var/lib/pgark-drills/main-1796276288-23994","kept":false}"#;

#[test]
fn a_format_1_drill_record_loads() {
    let d = tempfile::tempdir().unwrap();
    let store = pgark::catalog::store::LocalStore::new(d.path());
    use pgark::catalog::store::ObjectStore;
    store.put(&drill_record::key("main", 1796276288), DRILL_V1.as_bytes()).unwrap();
    let r = drill_record::load(&store, "main", 1796276288).unwrap();
    assert_eq!((r.format, r.success, r.failed_step.as_deref()), (1, false, Some("sql")));
    assert_eq!(r.recovered.timeline, Some(2));
    assert!(r.checks[1].skipped);
    let again: serde_json::Value = serde_json::to_value(&r).unwrap();
    let original: serde_json::Value = serde_json::from_str(DRILL_V1).unwrap();
    assert_eq!(again, original);
    assert_eq!(drill_record::latest(&store, "main").unwrap().0.unwrap(), r);
}

/// A verify result as `pgark verify` writes it (`<server>/backups/<id>.verify`, pretty JSON).
const VERIFY_V1: &str = r#"{
  "format": 1,
  "backup": "20261202T101500Z",
  "verified_at": 1796206600,
  "status": "damaged",
  "problem_count": 2,
  "problems": [
    {
      "subject": "chunk",
      "object": "ab/abcdef.zst",
      "backup": "20261202T101500Z",
      "message": "missing from the catalog; used by file base/1/1259"
    },
    {
      "subject": "wal",
      "object": "000000010000000000000007",
      "message": "missing from the catalog"
    }
  ],
  "unreachable": [
    "WAL 000000010000000000000007 missing: no PITR between 0/7000000 and the end; no backup after it"
  ],
  "bytes_checked": 20981234,
  "seconds": 1.5
}"#;

#[test]
fn a_format_1_verify_result_loads() {
    use pgark::verify::record::{Subject, VerifyRecord, RECORD_FORMAT};
    let r: VerifyRecord = serde_json::from_str(VERIFY_V1).unwrap();
    assert_eq!((r.format, r.format), (1, RECORD_FORMAT));
    assert_eq!((r.status.as_str(), r.problem_count, r.verified_at), ("damaged", 2, 1796206600));
    assert_eq!(r.problems[0].subject, Subject::Chunk);
    assert_eq!(r.problems[1].backup, None);
    // Written back, it is the same document.
    assert_eq!(serde_json::to_string_pretty(&r).unwrap(), VERIFY_V1);
}
