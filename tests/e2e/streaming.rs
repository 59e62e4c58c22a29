//! Byte-exactness across segment switches, on PostgreSQL 15 and every major of the matrix.

use crate::support::*;

fn byte_exact_on(bins: &PgBinaries) {
    eprintln!("byte-exact test on PostgreSQL {} ({})", bins.major, bins.bindir.display());
    let c = Cluster::init_with(bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let p = Pgark::start(&server_yaml("main", &c.conninfo(&c.superuser), "synchronous: true"));
    p.wait_streaming("main");
    for _ in 0..6 {
        write_rows(&c, 300);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    write_rows(&c, 50);
    let target = current_flush_lsn(&c);
    p.wait_flushed("main", target);
    let mut p = p;
    assert_eq!(p.term(), 0, "SIGTERM must exit 0");
    let seg = seg_size(&c);
    let compared = assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg);
    assert!(compared >= 5, "only {compared} segments compared on PostgreSQL {}", bins.major);
    assert_no_gap(&p.wal_dir("main"), seg);
    // Every archived segment carries a checksum that verifies (decompression checks it).
    let zst = std::fs::read_dir(p.wal_dir("main"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".zst"))
        .count();
    assert!(zst >= 5, "segments were not compressed: {zst}");
}

#[test]
fn byte_exact_pg15() {
    byte_exact_on(&pg());
}

#[test]
fn byte_exact_version_matrix() {
    for bins in matrix() {
        byte_exact_on(&bins);
    }
}

#[test]
fn uncompressed_catalog_records_checksums() {
    let bins = pg();
    let c = Cluster::init_with(&bins, &["wal_keep_size = 1GB"], &["--wal-segsize=1"]).unwrap();
    c.start().unwrap();
    let mut p = Pgark::start(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "compression: none\nsynchronous: false",
    ));
    p.wait_streaming("main");
    for _ in 0..3 {
        write_rows(&c, 200);
        c.psql("SELECT pg_switch_wal()").unwrap();
    }
    p.wait_flushed("main", current_flush_lsn(&c));
    assert_eq!(p.term(), 0);
    let seg = seg_size(&c);
    assert!(assert_byte_exact(&p.wal_dir("main"), &c.pg_wal(), seg) >= 3);
    for (name, _) in completed_segments(&p.wal_dir("main"), seg) {
        let sum = std::fs::read_to_string(p.wal_dir("main").join(format!("{name}.sum"))).unwrap();
        let sum = pgark::catalog::segment_file::SegmentChecksum::from_sum_text(&sum).unwrap();
        let data = std::fs::read(p.wal_dir("main").join(&name)).unwrap();
        pgark::catalog::segment_file::verify(&data, sum).unwrap();
    }
}
