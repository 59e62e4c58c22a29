//! A backup's files against PostgreSQL's `backup_manifest` stored beside its index: the
//! manifest's own SHA-256 line, then every file it lists present in the index with the same
//! size, and the same CRC-32C when the manifest carries CRC32C checksums (compared with the
//! index's record and with the CRC the file's chunks actually have).
//!
//! The parser is verify's own (small, read-only): `backup::manifest` is a sibling module, and
//! siblings never import each other.

use crate::util::hex::{from_hex, to_hex};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// One file as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub size: u64,
    /// CRC-32C, when that is the manifest's algorithm for the file.
    pub crc32c: Option<u32>,
}

/// Parses a manifest after checking its `Manifest-Checksum`; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Listed>, String> {
    self_checksum(bytes)?;
    let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut out = BTreeMap::new();
    for f in doc.get("Files").and_then(|v| v.as_array()).ok_or("no Files list")? {
        let path = match (
            f.get("Path").and_then(|v| v.as_str()),
            f.get("Encoded-Path").and_then(|v| v.as_str()),
        ) {
            (Some(p), _) => p.to_string(),
            (None, Some(hex)) => from_hex(hex)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("Encoded-Path {hex:?} is not hex of UTF-8"))?,
            _ => return Err("a Files entry has neither Path nor Encoded-Path".into()),
        };
        let size = f.get("Size").and_then(|v| v.as_u64()).ok_or_else(|| format!("{path}: no Size"))?;
        let crc32c = match (
            f.get("Checksum-Algorithm").and_then(|v| v.as_str()),
            f.get("Checksum").and_then(|v| v.as_str()),
        ) {
            // The hex of the four CRC bytes in the server's (little-endian) order.
            (Some("CRC32C"), Some(hex)) => {
                let b = from_hex(hex)
                    .filter(|b| b.len() == 4)
                    .ok_or_else(|| format!("{path}: CRC32C checksum {hex:?} is not 8 hex digits"))?;
                Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => None,
        };
        out.insert(path, Listed { size, crc32c });
    }
    Ok(out)
}

/// The manifest ends with `"Manifest-Checksum": "<sha256 of every byte before that key>"`.
fn self_checksum(bytes: &[u8]) -> Result<(), String> {
    const KEY: &[u8] = b"\"Manifest-Checksum\"";
    let at = bytes
        .windows(KEY.len())
        .rposition(|w| w == KEY)
        .ok_or("no Manifest-Checksum line (truncated?)")?;
    let rest = String::from_utf8_lossy(&bytes[at + KEY.len()..]);
    let hex: String = rest
        .trim_start_matches([' ', ':'])
        .trim_start()
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let computed = to_hex(&Sha256::digest(&bytes[..at]));
    if hex.to_ascii_lowercase() != computed {
        return Err(format!(
            "Manifest-Checksum {hex} does not match its contents (SHA-256 {computed}): the manifest is damaged"
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
