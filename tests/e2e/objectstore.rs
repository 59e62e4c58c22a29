//! The object store the repository tests of issue 15 will run against: SeaweedFS, started and
//! stopped by the harness (`support::seaweed`), with credentials enforced. Today this checks the
//! harness itself: the S3 API answers on its reserved port and refuses requests without valid
//! credentials.

use crate::support::seaweed::{Seaweed, SECRET_KEY};
use pgark::catalog::encryption::{Key, Keyring};
use pgark::catalog::remote_store::RemoteStore;
use pgark::catalog::sealed_store::SealedStore;
use pgark::catalog::store::ObjectStore;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// A raw HTTP request to the S3 API; the status line and body.
fn request(port: u16, extra_headers: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /pgark-test-bucket/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn seaweedfs_runs_on_reserved_ports_and_checks_credentials() {
    let Some(mut sw) = Seaweed::start() else { return };
    let anonymous = request(sw.s3_port, "");
    assert!(anonymous.starts_with("HTTP/1.1 403"), "{anonymous}\n{}", sw.log_text());
    assert!(anonymous.contains("AccessDenied"), "{anonymous}");
    let now = chrono::Utc::now();
    let forged = request(
        sw.s3_port,
        &format!(
            "x-amz-date: {}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: AWS4-HMAC-SHA256 Credential=not-a-key/{}/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=00\r\n",
            now.format("%Y%m%dT%H%M%SZ"),
            now.format("%Y%m%d")
        ),
    );
    assert!(forged.starts_with("HTTP/1.1 403"), "{forged}");
    assert!(forged.contains("InvalidAccessKeyId"), "{forged}");
    // A second instance beside it gets ports of its own.
    let Some(other) = Seaweed::start() else { return };
    assert_ne!(other.s3_port, sw.s3_port);
    sw.stop();
}

/// The repository store against a real S3 API: every trait operation, the prefix kept apart,
/// sealing on top, and a wrong secret refused with the repository named.
#[test]
fn remote_store_speaks_s3_under_its_prefix() {
    let Some(sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-repo");
    let store = RemoteStore::new(sw.s3_spec("pgark-repo", "site/a", SECRET_KEY)).unwrap();
    let other = RemoteStore::new(sw.s3_spec("pgark-repo", "site/b", SECRET_KEY)).unwrap();
    store.probe().unwrap();
    assert_eq!(store.get("main/wal/x").unwrap(), None);
    assert_eq!(store.size("main/wal/x").unwrap(), None);
    store.put("main/wal/000000010000000000000001.zst", b"one").unwrap();
    store.put_from("main/backups/b1.json", &mut |w| w.write_all(b"{}")).unwrap();
    assert_eq!(
        store.put_once("main/chunks/ab/abcd", &mut |w| w.write_all(b"chunk")).unwrap(),
        Some(5)
    );
    assert_eq!(store.put_once("main/chunks/ab/abcd", &mut |w| w.write_all(b"other")).unwrap(), None);
    store.sync().unwrap();
    assert_eq!(store.get("main/wal/000000010000000000000001.zst").unwrap().unwrap(), b"one");
    assert_eq!(store.get("main/chunks/ab/abcd").unwrap().unwrap(), b"chunk");
    assert_eq!(store.size("main/backups/b1.json").unwrap(), Some(2));
    assert_eq!(store.list("main").unwrap(), ["main/backups", "main/chunks", "main/wal"]);
    assert_eq!(store.list("main/wal").unwrap(), ["main/wal/000000010000000000000001.zst"]);
    assert_eq!(store.list("nothing").unwrap(), Vec::<String>::new());
    let u = store.usage("main").unwrap();
    assert_eq!((u.objects, u.bytes), (3, 10));
    assert_eq!(other.list("main").unwrap(), Vec::<String>::new(), "another prefix sees nothing");
    store.delete("main/wal/000000010000000000000001.zst").unwrap();
    store.delete("main/wal/000000010000000000000001.zst").unwrap();
    assert_eq!(store.get("main/wal/000000010000000000000001.zst").unwrap(), None);
    assert_eq!(store.capacity().unwrap(), None);

    // Sealed: nothing readable at rest, the plaintext back through the keyring.
    let sealed = SealedStore::new(Arc::new(store.clone()), Arc::new(Keyring::new(Key::generate(), vec![])));
    sealed.put("main/wal/secret", b"INSERT row 4242").unwrap();
    let at_rest = store.get("main/wal/secret").unwrap().unwrap();
    assert!(!at_rest.windows(4).any(|w| w == b"4242"));
    assert_eq!(sealed.get("main/wal/secret").unwrap().unwrap(), b"INSERT row 4242");

    let wrong = RemoteStore::new(sw.s3_spec("pgark-repo", "site/a", "not-the-secret")).unwrap();
    let e = wrong.get("main/backups/b1.json").unwrap_err().to_string();
    assert!(e.contains("repository offsite") && e.contains("main/backups/b1.json"), "{e}");
}
