//! Facts about the running process and the system's users.

/// Whether the process runs as root (PostgreSQL refuses to; files written for it need chown).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of a user name; `None` when there is no such user. The error is the name being
/// unusable (a NUL byte in it).
pub fn user_ids(name: &str) -> Result<Option<(u32, u32)>, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("{name:?}: not a user name"))?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `c` is NUL-terminated, `pwd` and `result` are
    // owned locals, `buf` is a live buffer of the length passed.
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(format!(
            "{name:?}: looking up the user failed: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if result.is_null() {
        return Ok(None);
    }
    Ok(Some((pwd.pw_uid, pwd.pw_gid)))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is a plain C struct of integers and pointers; all-zero is a valid value
    // (null pointers), and getpwnam_r fills it before it is read.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_exists_and_nonsense_does_not() {
        assert_eq!(super::user_ids("root").unwrap(), Some((0, 0)));
        assert_eq!(super::user_ids("no-such-user-pgark").unwrap(), None);
        assert!(super::user_ids("a\0b").is_err());
    }
}
