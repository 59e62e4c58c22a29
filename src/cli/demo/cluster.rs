//! The demo's throwaway PostgreSQL: `initdb` and `pg_ctl` in a scratch directory, a Unix socket
//! there, a free port. As root, the server runs as the `postgres` OS user (PostgreSQL refuses
//! root). The tests have a fuller harness of their own (`tests/e2e/support`); this is only what
//! the demo needs.

use crate::util::os::running_as_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> Result<ScratchDir, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        // The server (the postgres user, when we are root) must reach its files below.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(|e| format!("chmod {}: {e}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Finds `initdb`, `pg_ctl` and `postgres`: `$PGARK_PG_BINDIR`, PATH, `pg_config --bindir`, then
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("PGARK_PG_BINDIR") {
        candidates.push(PathBuf::from(d));
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    debian.sort();
    candidates.extend(debian.into_iter().rev().map(|(_, p)| p));
    candidates
        .into_iter()
        .find(|d| ["initdb", "pg_ctl", "postgres"].iter().all(|b| d.join(b).is_file()))
        .ok_or_else(|| "no PostgreSQL server binaries found: install postgresql (apt-get install postgresql) or set PGARK_PG_BINDIR to the directory holding initdb, pg_ctl and postgres".into())
}

/// A free TCP port on 127.0.0.1. The demo binds its servers to Unix sockets too; a port taken
/// between this probe and the server's start makes `pg_ctl start` fail with a clear log.
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

/// A PostgreSQL data directory run with `pg_ctl`; dropping it stops the server at once.
pub struct Cluster {
    pub bindir: PathBuf,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub superuser: String,
    pub log: PathBuf,
    root: bool,
}

impl Cluster {
    /// initdb a new cluster in `<dir>/<name>` with replication allowed on the socket.
    pub fn init(bindir: &Path, dir: &Path, name: &str, extra_conf: &[&str]) -> Result<Cluster, String> {
        let c = Cluster::at(bindir, dir, name, dir.join(name).join("data"))?;
        let out = c
            .as_owner("initdb")
            .arg("-D")
            .arg(&c.data)
            .args(["-A", "trust", "-U", &c.superuser, "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        check(out, "initdb")?;
        let mut conf =
            "\nlisten_addresses = ''\nwal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nlogging_collector = off\n"
                .to_string();
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&c.data.join("postgresql.conf"), &conf)?;
        append(&c.data.join("pg_hba.conf"), "\nlocal replication all trust\n")?;
        Ok(c)
    }

    /// A data directory that already exists (a restore), with a socket directory in `<dir>/<name>`.
    pub fn at(bindir: &Path, dir: &Path, name: &str, data: PathBuf) -> Result<Cluster, String> {
        let root = running_as_root();
        let home = dir.join(name);
        let socket_dir = home.join("sock");
        std::fs::create_dir_all(&socket_dir).map_err(|e| format!("create {}: {e}", socket_dir.display()))?;
        if root {
            chown_postgres(&home)?;
        }
        Ok(Cluster {
            bindir: bindir.to_path_buf(),
            data,
            socket_dir,
            port: free_port()?,
            superuser: if root {
                "postgres".into()
            } else {
                std::env::var("USER").unwrap_or_else(|_| "postgres".into())
            },
            log: home.join("server.log"),
            root,
        })
    }

    fn as_owner(&self, bin: &str) -> Command {
        let path = self.bindir.join(bin);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the server on this cluster's port and socket and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        let opts = format!("-p {} -c unix_socket_directories='{}'", self.port, self.socket_dir.display());
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &opts, "-w", "-t", "120", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        check(out, "pg_ctl start").map(|_| ()).map_err(|e| {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            format!("{e}\nserver log {}:\n{log}", self.log.display())
        })
    }

    /// Stops the server: mode is smart, fast or immediate.
    pub fn stop(&self, mode: &str) -> Result<(), String> {
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .output()
            .map_err(|e| format!("pg_ctl stop: {e}"))?;
        check(out, "pg_ctl stop").map(|_| ())
    }

    /// A connection string over the Unix socket.
    pub fn conninfo(&self) -> String {
        format!("host={} port={} user={}", self.socket_dir.display(), self.port, self.superuser)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self.stop("immediate");
        }
    }
}

pub fn chown_postgres(path: &Path) -> Result<(), String> {
    let st = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("chown -R postgres {} failed", path.display()))
    }
}

fn check(out: Output, what: &str) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("write {}: {e}", path.display()))
}
