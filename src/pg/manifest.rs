//! PostgreSQL's `backup_manifest` format: parsing and its own SHA-256 self-check. Used by the
//! backup (to check what it received) and by verify (to check what is stored): one parser for
//! both, here below them.
//!
//! pgark asks for CRC-32C file checksums (the server's cheapest); the manifest writes them as the
//! hex of the four CRC bytes in host order, which is little-endian on every platform PostgreSQL
//! ships binaries for.

use crate::util::hex::{from_hex, to_hex};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub size: u64,
    /// CRC-32C of the contents, when the manifest carries one.
    pub crc32c: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub version: u64,
    pub system_identifier: Option<u64>,
    pub files: BTreeMap<String, ManifestFile>,
}

#[derive(Debug, thiserror::Error)]
#[error("backup_manifest: {0}")]
pub struct ManifestError(pub String);

fn e(m: impl Into<String>) -> ManifestError {
    ManifestError(m.into())
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        verify_self_checksum(bytes)?;
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|x| e(format!("not valid JSON: {x}")))?;
        let version = doc
            .get("PostgreSQL-Backup-Manifest-Version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| e("PostgreSQL-Backup-Manifest-Version missing"))?;
        if !(1..=2).contains(&version) {
            return Err(e(format!("manifest version {version} is not supported (expected 1 or 2)")));
        }
        let system_identifier = doc.get("System-Identifier").and_then(|v| v.as_u64());
        let mut files = BTreeMap::new();
        for f in doc.get("Files").and_then(|v| v.as_array()).ok_or_else(|| e("Files missing"))? {
            let path = match (
                f.get("Path").and_then(|v| v.as_str()),
                f.get("Encoded-Path").and_then(|v| v.as_str()),
            ) {
                (Some(p), _) => p.to_string(),
                (None, Some(hex)) => {
                    let raw = from_hex(hex).ok_or_else(|| e(format!("Encoded-Path {hex:?} is not hex")))?;
                    String::from_utf8(raw).map_err(|_| e(format!("Encoded-Path {hex:?} is not UTF-8; pgark stores UTF-8 names only")))?
                }
                _ => return Err(e("a Files entry has neither Path nor Encoded-Path")),
            };
            let size = f
                .get("Size")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| e(format!("{path}: Size missing")))?;
            let crc32c = match (
                f.get("Checksum-Algorithm").and_then(|v| v.as_str()),
                f.get("Checksum").and_then(|v| v.as_str()),
            ) {
                (Some("CRC32C"), Some(hex)) => {
                    let b = from_hex(hex)
                        .filter(|b| b.len() == 4)
                        .ok_or_else(|| e(format!("{path}: CRC32C checksum {hex:?} is not 8 hex digits")))?;
                    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                _ => None,
            };
            files.insert(path, ManifestFile { size, crc32c });
        }
        Ok(Manifest {
            version,
            system_identifier,
            files,
        })
    }
}

/// The manifest ends with `"Manifest-Checksum": "<sha256 of every byte before that key>"`.
fn verify_self_checksum(bytes: &[u8]) -> Result<(), ManifestError> {
    const KEY: &[u8] = b"\"Manifest-Checksum\"";
    let at = bytes
        .windows(KEY.len())
        .rposition(|w| w == KEY)
        .ok_or_else(|| e("Manifest-Checksum missing (manifest truncated?)"))?;
    let rest = std::str::from_utf8(&bytes[at + KEY.len()..]).map_err(|_| e("Manifest-Checksum is not text"))?;
    let hex: String = rest
        .trim_start_matches([' ', ':'])
        .trim_start()
        .trim_start_matches('"')
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    let computed = to_hex(&Sha256::digest(&bytes[..at]));
    if hex.to_ascii_lowercase() != computed {
        return Err(e(format!(
            "Manifest-Checksum {hex} does not match the manifest's contents ({computed}): corrupted in transit"
        )));
    }
    Ok(())
}
