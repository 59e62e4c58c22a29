//! Which PostgreSQL binaries a drill runs: those of the backup's major version, from
//! `drill.pg_bindir`, else `/usr/lib/postgresql/<major>/bin` (Debian, Ubuntu), `pg_config
//! --bindir`, then every directory of `PATH`. A directory counts when its `postgres --version`
//! reports that major: a cluster never starts on another major's binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The server binaries of one major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub major: u32,
}

impl PgBinaries {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// The major of a `server_version_num` (150018 -> 15; 90624, 9.6, -> 9, as `postgres --version`
/// starts).
pub fn major_of(version_num: u32) -> u32 {
    version_num / 10_000
}

/// The major `<dir>/postgres --version` reports (`postgres (PostgreSQL) 15.8 (Debian …)`).
pub fn major_at(dir: &Path) -> Option<u32> {
    let out = Command::new(dir.join("postgres")).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_version_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_version_major(text: &str) -> Option<u32> {
    let v = text.split_whitespace().find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let first: u32 = parts.next()?.parse().ok()?;
    // 9.6 -> 9 (the tests and drills only ever see 10 and later).
    Some(first)
}

/// The directories searched, in order.
pub fn candidates(configured: Option<&Path>, major: u32) -> Vec<PathBuf> {
    if let Some(d) = configured {
        return vec![d.to_path_buf()];
    }
    let mut c = vec![PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))];
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            c.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        c.extend(std::env::split_paths(&path));
    }
    c.dedup();
    c
}

/// The binaries of `major`; the error names the major, what was searched, and what was found
/// instead.
pub fn find(configured: Option<&Path>, major: u32) -> Result<PgBinaries, String> {
    let mut others = Vec::new();
    let searched = candidates(configured, major);
    for dir in &searched {
        if !dir.join("postgres").is_file() {
            continue;
        }
        match major_at(dir) {
            Some(m) if m == major => {
                return Ok(PgBinaries {
                    bindir: dir.clone(),
                    major,
                })
            }
            Some(m) => others.push(format!("{} is PostgreSQL {m}", dir.display())),
            None => others.push(format!("{}/postgres --version failed", dir.display())),
        }
    }
    let list: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "no PostgreSQL {major} server binaries (the backup's major version) found; searched {}{}. Install PostgreSQL {major} (e.g. apt-get install postgresql-{major}) or set drill.pg_bindir to its bin directory",
        if configured.is_some() { format!("drill.pg_bindir {}", list.join(", ")) } else { list.join(", ") },
        if others.is_empty() { String::new() } else { format!(" ({})", others.join("; ")) }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        assert_eq!(major_of(150018), 15);
        assert_eq!(major_of(180000), 18);
        assert_eq!(major_of(90624), 9);
        assert_eq!(
            parse_version_major("postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_version_major("postgres (PostgreSQL) 17beta1\n"), Some(17));
        assert_eq!(parse_version_major("nonsense"), None);
    }

    #[test]
    fn a_missing_major_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = find(Some(d.path()), 99).unwrap_err();
        assert!(e.contains("no PostgreSQL 99 server binaries"), "{e}");
        assert!(e.contains("drill.pg_bindir"), "{e}");
    }
}
