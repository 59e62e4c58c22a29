//! Comparing what a backup received against PostgreSQL's `backup_manifest` (the format itself
//! is parsed in `pg::manifest`).

pub use crate::pg::manifest::{Manifest, ManifestError, ManifestFile};

/// One received file, as the manifest check needs it.
#[derive(Debug, Clone)]
pub struct ReceivedFile<'a> {
    pub path: &'a str,
    pub size: u64,
    pub crc32c: u32,
}

/// Compares what was received with the manifest: every manifest file must have arrived with the
/// same size and checksum, and every received regular file must be listed (WAL segments the
/// server appended with the WAL option are not listed and are skipped by the caller).
pub fn check<'a>(manifest: &Manifest, received: impl IntoIterator<Item = ReceivedFile<'a>>) -> Result<usize, ManifestError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for f in received {
        match manifest.files.get(f.path) {
            None => problems.push(format!("{}: received but not in the manifest", f.path)),
            Some(m) if m.size != f.size => problems.push(format!("{}: size {} but the manifest says {}", f.path, f.size, m.size)),
            Some(ManifestFile { crc32c: Some(c), .. }) if *c != f.crc32c => {
                problems.push(format!("{}: CRC-32C {:08x} but the manifest says {:08x}", f.path, f.crc32c, c))
            }
            Some(_) => {}
        }
        seen.insert(f.path.to_string());
    }
    for p in manifest.files.keys() {
        if !seen.contains(p) {
            problems.push(format!("{p}: in the manifest but not received"));
        }
    }
    if problems.is_empty() {
        Ok(seen.len())
    } else {
        let n = problems.len();
        problems.truncate(10);
        Err(ManifestError(format!(
            "{n} file(s) do not match the manifest: {}",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::hex::to_hex;
    use sha2::{Digest, Sha256};

    fn build(files: &str) -> Vec<u8> {
        let head = format!("{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}\n],\n\"WAL-Ranges\": [\n],\n");
        let sum = to_hex(&Sha256::digest(head.as_bytes()));
        format!("{head}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    #[test]
    fn parses_and_checks() {
        let crc = crc32c::crc32c(b"hello");
        let hex = to_hex(&crc.to_le_bytes());
        let m = build(&format!(
            "{{ \"Path\": \"a\", \"Size\": 5, \"Last-Modified\": \"x\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{hex}\" }},\n{{ \"Encoded-Path\": \"62\", \"Size\": 0 }}"
        ));
        let man = Manifest::parse(&m).unwrap();
        assert_eq!(
            man.files["a"],
            ManifestFile {
                size: 5,
                crc32c: Some(crc)
            }
        );
        assert!(man.files.contains_key("b"));
        let ok = [
            ReceivedFile {
                path: "a",
                size: 5,
                crc32c: crc,
            },
            ReceivedFile {
                path: "b",
                size: 0,
                crc32c: 0,
            },
        ];
        assert_eq!(check(&man, ok.clone()).unwrap(), 2);
        let bad = [ReceivedFile {
            path: "a",
            size: 5,
            crc32c: crc ^ 1,
        }];
        let msg = check(&man, bad).unwrap_err().to_string();
        assert!(
            msg.contains("a: CRC-32C") && msg.contains("b: in the manifest but not received"),
            "{msg}"
        );
    }

    #[test]
    fn detects_tampering() {
        let mut m = build("{ \"Path\": \"a\", \"Size\": 5 }");
        let at = m.iter().position(|&b| b == b'5').unwrap();
        m[at] = b'6';
        assert!(Manifest::parse(&m).unwrap_err().to_string().contains("does not match"));
        assert!(Manifest::parse(b"{}").unwrap_err().to_string().contains("missing"));
    }
}
