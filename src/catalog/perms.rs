//! Who may read the catalog. It holds every table's data, the `pg_authid` password hashes and
//! all WAL, so by default only pgark's own OS user can: directories 0700, files 0600, whatever
//! the umask pgark was started with (audit finding 7).
//!
//! With `catalog_group` set (for PostgreSQL's OS user running `pgark wal-get` as
//! `restore_command` on the same host), the catalog root belongs to that group with mode 2750:
//! the setgid bit makes every directory and file created below inherit the group, and the
//! process umask (027) makes them 2750 and 0640. Nothing is ever writable by the group or
//! readable by others.
//!
//! The mechanism is the process umask, set once before anything is created, so that no creation
//! path (segments, chunks, locks, temporary files) can forget its mode.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Mode of the catalog root: owner only, or owner and group (setgid, so the group is inherited).
const ROOT_PRIVATE: u32 = 0o700;
const ROOT_GROUP: u32 = 0o2750;

/// The gid of a group name (or a numeric gid).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("group name {name:?} contains a NUL byte"))?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf`, which we own and size correctly.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return Err(format!("no group named {name:?} on this host (expected a group name or number)"));
    }
    Ok(grp.gr_gid)
}

/// Sets the process umask for catalog writes: 077 (owner only) or 027 (group may read). The
/// first call decides for the life of the process: a reload that changes `catalog_group` takes
/// effect at the next start, as the root's group and mode do.
pub fn apply_umask(group_access: bool) {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(if group_access { 0o027 } else { 0o077 }) };
    });
}

/// Creates the catalog root if needed with the right mode (and group), and sets the umask.
/// An existing root keeps the mode the administrator gave it (`check` says what is wrong).
pub fn prepare_root(root: &Path, group: Option<&str>) -> io::Result<()> {
    apply_umask(group.is_some());
    let gid = match group {
        Some(g) => Some(group_id(g).map_err(io::Error::other)?),
        None => None,
    };
    if root.is_dir() {
        return Ok(());
    }
    crate::fsio::durable::create_dir_durable(root)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(root, None, Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving {} to group {gid}: {e} (pgark's user must be in that group)", root.display()),
            )
        })?;
    }
    let mode = if gid.is_some() { ROOT_GROUP } else { ROOT_PRIVATE };
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode))
}

/// What is wrong with the permissions of an existing catalog root: others can read it, or a
/// group can without `catalog_group` saying so, or it belongs to another group than the one
/// configured. Each message says how to fix it.
pub fn check(root: &Path, group: Option<&str>) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(root) else {
        return vec![];
    };
    let mode = meta.permissions().mode() & 0o7777;
    let mut out = Vec::new();
    let shown = root.display();
    if mode & 0o007 != 0 {
        out.push(format!(
            "catalog {shown} is readable by every user of this host (mode {mode:04o}); it holds all of the database's data: chmod o-rwx {shown}"
        ));
    }
    match group.map(group_id) {
        None if mode & 0o070 != 0 => out.push(format!(
            "catalog {shown} is accessible to its group (mode {mode:04o}) but catalog_group is not set: chmod g-rwx {shown}, or set catalog_group"
        )),
        Some(Ok(gid)) if meta.gid() != gid => out.push(format!(
            "catalog {shown} belongs to group {} but catalog_group is {}: chgrp -R {} {shown} && chmod g+s {shown}",
            meta.gid(),
            group.unwrap_or_default(),
            group.unwrap_or_default()
        )),
        _ => {}
    }
    if mode & 0o020 != 0 {
        out.push(format!(
            "catalog {shown} is writable by its group (mode {mode:04o}): chmod g-w {shown}"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_modes_and_warnings() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cat");
        prepare_root(&root, None).unwrap();
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o7777, 0o700);
        assert!(check(&root, None).is_empty());
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = check(&root, None);
        assert!(w.iter().any(|m| m.contains("every user")), "{w:?}");
        assert!(group_id("no-such-group-pgark").is_err());
        assert_eq!(group_id("0"), Ok(0));
    }
}
