//! A backup's files against PostgreSQL's `backup_manifest` stored beside its index: the
//! manifest's own SHA-256 line, then every file it lists present in the index with the same
//! size, and the same CRC-32C when the manifest carries CRC32C checksums (compared with the
//! index's record and with the CRC the file's chunks actually have).
//!
//! The format is parsed by `pg::manifest`, shared with the backup that received it.

use std::collections::BTreeMap;

/// One file as the manifest lists it (size, and CRC-32C when that is its algorithm).
pub use crate::pg::manifest::ManifestFile as Listed;

/// Parses a manifest after checking its `Manifest-Checksum`; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Listed>, String> {
    crate::pg::manifest::Manifest::parse(bytes)
        .map(|m| m.files)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::util::hex::to_hex;
    use sha2::{Digest, Sha256};

    pub fn manifest(files: &str) -> Vec<u8> {
        let body = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}\n],\n");
        let sum = to_hex(&Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    #[test]
    fn parses_and_checks_itself() {
        let m = manifest(
            r#"{ "Path": "base/1/1", "Size": 8192, "Last-Modified": "x", "Checksum-Algorithm": "CRC32C", "Checksum": "01020304" },
{ "Encoded-Path": "612f62", "Size": 3 }"#,
        );
        let files = parse(&m).unwrap();
        assert_eq!(
            files["base/1/1"],
            Listed {
                size: 8192,
                crc32c: Some(0x04030201)
            }
        );
        assert_eq!(files["a/b"].crc32c, None);
        let mut bad = m.clone();
        let at = bad.iter().position(|&b| b == b'8').unwrap();
        bad[at] = b'9';
        assert!(parse(&bad).unwrap_err().contains("does not match"));
        assert!(parse(b"{}").unwrap_err().contains("Manifest-Checksum"));
    }
}
