//! One-shot `pgark` commands (everything but `serve`, which `daemon::Pgark` runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn pgark_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_pgark"))
}

/// Runs `pgark ARGS...` as given (no config added), stdin closed.
pub fn pgark_args(args: &[&str]) -> Output {
    Command::new(pgark_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

/// Runs `pgark COMMAND --config CONFIG REST...` (`args` = COMMAND and REST) with `PGARK_LOG=info`.
pub fn pgark(config: &Path, args: &[&str]) -> Output {
    pgark_with(config, args, &[])
}

/// Like `pgark`, with extra environment (fault rules, another `PGARK_LOG`...).
pub fn pgark_with(config: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    run_bin(pgark_bin(), config, args, env)
}

fn run_bin(bin: &Path, config: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(bin)
        .arg(cmd)
        .arg("--config")
        .arg(config)
        .args(rest)
        .env("PGARK_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// stdout then stderr, as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A copy of the pgark binary that the `postgres` user can execute (the build directory may sit
/// under a private temporary directory): restore_command runs as the server's user.
pub struct Binary {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Binary {
    pub fn new() -> Binary {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new().prefix("pgark-bin-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("pgark");
        std::fs::copy(pgark_bin(), &path).unwrap();
        Binary { _dir: dir, path }
    }

    /// Like `cli::pgark`, with this copy.
    pub fn run(&self, config: &Path, args: &[&str]) -> Output {
        self.run_with(config, args, &[])
    }

    pub fn run_with(&self, config: &Path, args: &[&str], env: &[(String, String)]) -> Output {
        run_bin(&self.path, config, args, env)
    }
}
