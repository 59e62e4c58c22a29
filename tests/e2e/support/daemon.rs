//! `pgark serve` as a child process, so that SIGKILL and SIGTERM tests hit exactly what users
//! run; its status, metrics and log.

use super::ports::{self, Port};
use super::{catalog_group_yaml, http, tail, wait_until};
use pgark::pg::Lsn;
use pgark::service::status::{ConnState, DaemonStatus, ServerStatus};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `pgark serve` child process.
pub struct Pgark {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub catalog: PathBuf,
    /// `metrics.listen`: 127.0.0.1 and a port reserved for this daemon's lifetime.
    pub metrics: String,
    pub log: PathBuf,
    extra_env: Vec<(String, String)>,
    /// Extra keys under `metrics:` (each line indented by 2), and extra top-level YAML.
    metrics_extra: String,
    top: String,
    _metrics_port: Port,
}

impl Pgark {
    /// Writes a config with the given `servers:` YAML body (already indented by 2) and starts.
    pub fn start(servers_yaml: &str) -> Pgark {
        Self::start_env(servers_yaml, &[])
    }

    pub fn start_env(servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        Self::start_full("", "", servers_yaml, env)
    }

    /// `metrics_extra`: lines under `metrics:` besides `listen` (indented by 2); `top`: other
    /// top-level YAML (`disk_pressure:` ...).
    pub fn start_full(metrics_extra: &str, top: &str, servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        Self::start_in(None, metrics_extra, top, servers_yaml, env)
    }

    /// Like `start_full`, with the catalog at `catalog` (a small filesystem, say) instead of
    /// inside the test's temporary directory.
    pub fn start_in(catalog: Option<&Path>, metrics_extra: &str, top: &str, servers_yaml: &str, env: &[(&str, &str)]) -> Pgark {
        let dir = tempfile::Builder::new().prefix("pgark-test-").tempdir().unwrap();
        let catalog = catalog.map_or_else(|| dir.path().join("catalog"), Path::to_path_buf);
        let port = ports::reserve();
        let metrics = format!("127.0.0.1:{port}");
        let config = dir.path().join("pgark.yaml");
        let log = dir.path().join("pgark.log");
        let mut p = Pgark {
            child: None,
            dir,
            config,
            catalog,
            metrics,
            log,
            extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics_extra: metrics_extra.to_string(),
            top: top.to_string(),
            _metrics_port: port,
        };
        p.rewrite_servers(servers_yaml);
        p.spawn();
        p
    }

    pub fn rewrite_servers(&self, servers_yaml: &str) {
        let lines = |t: &str| t.lines().map(|l| format!("{l}\n")).collect::<String>();
        std::fs::write(
            &self.config,
            format!(
                "catalog: {}\n{}metrics:\n  listen: {}\n{}{}servers:\n{servers_yaml}",
                self.catalog.display(),
                catalog_group_yaml(),
                self.metrics,
                lines(&self.metrics_extra),
                lines(&self.top),
            ),
        )
        .unwrap();
    }

    /// Replaces the extra top-level YAML (then `rewrite_servers` and `hup` to apply it).
    pub fn set_top(&mut self, top: &str) {
        self.top = top.to_string();
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgark"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("PGARK_LOG", "info,pgark=debug")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "pgark HTTP endpoint", || {
            self.status().is_some() || self.exited()
        });
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))))
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn term(&mut self) -> i32 {
        let mut c = self.child.take().expect("pgark is running");
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pgark did not stop within 30s of SIGTERM\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces the extra environment of the next `spawn` (fault rules, say).
    pub fn set_env(&mut self, env: &[(String, String)]) {
        self.extra_env = env.to_vec();
    }

    /// SIGTERM and wait; returns the exit code and how long the stop took.
    pub fn term_timed(&mut self) -> (i32, Duration) {
        let start = Instant::now();
        let code = self.term();
        (code, start.elapsed())
    }

    pub fn hup(&self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.pid(), libc::SIGHUP) };
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/status`, or `None` while the endpoint does not answer with a status document.
    pub fn status(&self) -> Option<DaemonStatus> {
        let (_, body) = http::get(&self.metrics, "/status", Duration::from_secs(5)).ok()?;
        serde_json::from_str(&body).ok()
    }

    /// GET on the daemon's endpoint: (status code, body). Panics when it does not answer.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http::get(&self.metrics, path, Duration::from_secs(20)).unwrap_or_else(|e| panic!("GET {path} from pgark: {e}"))
    }

    /// The `/metrics` exposition (asserting status 200).
    pub fn metrics_text(&self) -> String {
        let (code, text) = self.http_get("/metrics");
        assert_eq!(code, 200, "GET /metrics: {text}");
        text
    }

    /// The value of one series on `/metrics`, e.g. `pgark_up{server="main"}`; `None` when absent.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), series)
    }

    /// Waits (60 s at most) until the series `series` has a value for which `ok` holds.
    pub fn wait_metric(&self, series: &str, what: &str, ok: impl Fn(f64) -> bool) {
        wait_until(Duration::from_secs(60), what, || self.metric(series).is_some_and(&ok));
    }

    pub fn server(&self, name: &str) -> Option<ServerStatus> {
        self.status()?.servers.into_iter().find(|s| s.server == name)
    }

    pub fn wait_streaming(&self, name: &str) {
        wait_until(Duration::from_secs(60), &format!("{name} streaming"), || {
            self.server(name).is_some_and(|s| s.state == ConnState::Streaming)
        });
    }

    /// Waits until pgark has durably stored WAL up to `lsn`.
    pub fn wait_flushed(&self, name: &str, lsn: Lsn) {
        let start = Instant::now();
        loop {
            let s = self.server(name);
            if s.as_ref().and_then(|s| s.flushed_lsn).is_some_and(|f| f >= lsn) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "pgark did not flush {lsn} (status {s:?})\n{}",
                tail(&self.log_text())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wal_dir(&self, server: &str) -> PathBuf {
        self.catalog.join(server).join("wal")
    }
}

impl Drop for Pgark {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- pgark log ---\n{}", tail(&self.log_text()));
        }
    }
}

/// The value of the series `series` (name and labels exactly as exposed, e.g.
/// `pgark_up{server="main"}`) in a Prometheus exposition; `None` when absent.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
