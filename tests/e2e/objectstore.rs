//! The object store the repository tests of issue 15 will run against: SeaweedFS, started and
//! stopped by the harness (`support::seaweed`), with credentials enforced. Today this checks the
//! harness itself: the S3 API answers on its reserved port and refuses requests without valid
//! credentials.

use crate::support::seaweed::Seaweed;
use std::io::{Read, Write};
use std::net::TcpStream;
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
