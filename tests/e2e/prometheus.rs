//! Monitoring issue test 3: a real Prometheus (Debian's package) scrapes a running pgark that
//! streams a real PostgreSQL under load; `promtool check rules` passes on the shipped rules;
//! every PromQL expression of the shipped dashboard and rules evaluates without error; and
//! every dashboard panel returns data. Prometheus runs with docker/prometheus.yml, only its
//! target, interval and rules path adapted, so the compose setup's config is exercised too.
//! pgark uploads to an off-site repository on SeaweedFS (a real S3 API), so that the off-site
//! panels and rules have series too.

use crate::support::seaweed::{Seaweed, SECRET_KEY};
use crate::support::{self, *};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The Prometheus and promtool binaries, or `None` (a skip) outside CI.
fn prometheus_bins() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    match (find("prometheus"), find("promtool")) {
        (Some(p), Some(t)) => Some((p, t)),
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "prometheus and promtool are required in CI (Debian package prometheus; .ci/setup installs it)"
            );
            eprintln!("SKIP: prometheus/promtool not installed (apt-get install prometheus)");
            None
        }
    }
}

/// GET on Prometheus' HTTP API.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    support::http::get(addr, path, Duration::from_secs(20)).unwrap_or_else(|e| panic!("GET {path} from Prometheus: {e}"))
}

struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    _port: support::ports::Port,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &Path, target: &str) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("pgark-prom-").tempdir().unwrap();
        let mut cfg: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("docker/prometheus.yml")).unwrap()).unwrap();
        cfg["global"]["scrape_interval"] = "1s".into();
        cfg["global"]["evaluation_interval"] = "1s".into();
        cfg["rule_files"] = vec![serde_yaml::Value::from(repo("grafana/pgark-alerts.yml").display().to_string())].into();
        cfg["scrape_configs"][0]["static_configs"][0]["targets"] = vec![serde_yaml::Value::from(target)].into();
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
        let port = support::ports::reserve();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
            _port: port,
        };
        wait_until(Duration::from_secs(60), "Prometheus to answer", || {
            support::http::get(&p.addr, "/-/ready", Duration::from_secs(20)).is_ok_and(|(code, _)| code == 200)
        });
        p
    }

    /// Evaluates `expr` now; panics when Prometheus reports an error. Returns the result list.
    fn query(&self, expr: &str) -> Vec<Value> {
        let q: String = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC).to_string();
        let (code, body) = http_get(&self.addr, &format!("/api/v1/query?query={q}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: bad response {code} {body}: {e}"));
        assert_eq!(v["status"], "success", "PromQL failed: {expr}\n{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Every `expr` of the dashboard's panels, with Grafana's variables as Prometheus sees them.
fn dashboard_exprs() -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(repo("grafana/dashboards/pgark.json")).unwrap()).unwrap();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"server"),
        "dashboard variables: {vars:?}"
    );
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} must use the datasource variable",
            p["title"]
        );
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$server", "main")
                .replace("$__rate_interval", "30s");
            out.push((p["title"].as_str().unwrap().to_string(), e));
        }
    }
    assert!(out.len() >= 20, "dashboard has only {} queries", out.len());
    out
}

fn rule_exprs() -> Vec<(String, String)> {
    let r: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("grafana/pgark-alerts.yml")).unwrap()).unwrap();
    let mut out = Vec::new();
    for g in r["groups"].as_sequence().unwrap() {
        for rule in g["rules"].as_sequence().unwrap() {
            out.push((
                rule["alert"].as_str().unwrap().to_string(),
                rule["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn prometheus_scrapes_pgark_and_every_dashboard_and_rule_expression_works() {
    let Some((prometheus, promtool)) = prometheus_bins() else { return };
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo("grafana/pgark-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // An off-site repository, so that the off-site metrics exist (they have a series per server
    // and repository only when one is configured). The secret is readable by PostgreSQL's user:
    // the drill's restore_command (wal-get) opens the repository for WAL the local catalog lacks.
    let Some(sw) = Seaweed::start() else { return };
    sw.create_bucket("pgark-prometheus");
    let secrets = tempfile::Builder::new().prefix("pgark-secrets-").tempdir().unwrap();
    let secret = secrets.path().join("s3.secret");
    std::fs::write(&secret, SECRET_KEY).unwrap();
    open_for_postgres(secrets.path());
    let repositories = format!(
        "repositories:\n{}",
        sw.repo_yaml("offsite", "pgark-prometheus", "site1", &secret, "")
    );

    let c = Cluster::init(&pg(), &["synchronous_standby_names = 'pgark'", "max_slot_wal_keep_size = '2GB'"]).unwrap();
    c.start().unwrap();
    let servers = server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "synchronous: true\nmonitor_interval: 1s\nslot_retained_limit: 1GiB",
    );
    // The catalog watch measures every second (by default every 15 s), so that its panels
    // have data soon.
    let p = Pgark::start_full(
        "",
        &format!("disk_pressure:\n  check_interval: 1s\n  usage_interval: 2s\n{repositories}"),
        &servers,
        &[],
    );
    p.wait_streaming("main");
    // A backup, so the backup and recovery-window panels have data; then a scheduled verify and
    // drill (added after the backup: before it, a drill could not start), so theirs do too.
    backup(&p.config, "main", &[]);
    open_for_postgres(p.dir.path());
    p.rewrite_servers(&server_yaml(
        "main",
        &c.conninfo(&c.superuser),
        "synchronous: true\nmonitor_interval: 1s\nslot_retained_limit: 1GiB\nverify_schedule: 1h\ndrill: {schedule: 1h}\nretention: {redundancy: 2}",
    ));
    p.hup();
    wait_until(Duration::from_secs(120), "the scheduled verify and drill", || {
        p.metric("pgark_verify_last_success_timestamp_seconds{server=\"main\"}").is_some()
            && p.metric("pgark_drill_last_success_timestamp_seconds{server=\"main\"}").is_some()
    });
    // The backup reached the repository without an upload error (else PgarkOffsiteNoBackup's
    // and PgarkOffsiteUploadsFailing's expressions would hold below), and its lag is measured.
    wait_until(Duration::from_secs(120), "the backup in the repository", || {
        p.server("main").is_some_and(|s| {
            s.offsite
                .iter()
                .any(|o| o.repository == "offsite" && o.backups >= 1 && o.lag_seconds.is_some() && o.last_error.is_none())
        })
    });

    // The exposition passes promtool's linter (HELP and TYPE for every metric, naming rules).
    let mut lint = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exposition = p.metrics_text();
    lint.stdin.take().unwrap().write_all(exposition.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = Prometheus::start(&prometheus, &p.metrics);
    wait_until(Duration::from_secs(60), "Prometheus to scrape pgark", || {
        prom.query("up{job=\"pgark\"} == 1").len() == 1
    });
    // Load while Prometheus collects enough samples for rate() and histogram panels.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let exprs = dashboard_exprs();
    let mut missing: Vec<(String, String)>;
    loop {
        write_rows(&c, 300);
        // The catalog watch and the monitor run every second.
        missing = exprs.iter().filter(|(_, e)| prom.query(e).is_empty()).cloned().collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        // The poll interval of this wait (with fresh WAL each round), not a wait for anything.
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        missing.is_empty(),
        "dashboard panels without data after 2 minutes: {missing:#?}\n--- metrics ---\n{}",
        p.metrics_text()
    );

    // Every alert expression evaluates; with everything healthy none fires, except possibly the
    // catalog-space ones, which depend on the test machine's disk (and its size against the
    // test's WAL rate), not on pgark.
    let machine_dependent = [
        "PgarkCatalogSpaceLow",
        "PgarkCatalogSpaceCritical",
        "PgarkCatalogFullSoon",
        "PgarkCatalogFullVerySoon",
    ];
    for (name, e) in rule_exprs() {
        let result = prom.query(&e);
        if !machine_dependent.contains(&name.as_str()) {
            assert!(result.is_empty(), "alert {name} fires on a healthy setup: {result:?}");
        }
    }
    // Prometheus itself evaluated the rule groups without error.
    wait_until(Duration::from_secs(30), "rule groups evaluated", || {
        let (_, body) = http_get(&prom.addr, "/api/v1/rules");
        let v: Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        for r in &rules {
            assert_ne!(r["health"], "err", "rule {} failed: {}", r["name"], r["lastError"]);
        }
        rules.len() == rule_exprs().len() && rules.iter().all(|r| r["health"] == "ok")
    });

    // pgark stopped: Prometheus sees it down and PgarkDaemonDown's expression fires.
    drop(p);
    wait_until(Duration::from_secs(30), "Prometheus to see pgark down", || {
        !prom.query("up{job=\"pgark\"} == 0").is_empty()
    });
}

/// No Docker engine runs in CI, so docker/compose.yaml is checked statically: every file it
/// mounts or builds from exists, pgark's config there is valid, Prometheus loads the rules from
/// where compose mounts them, and Grafana's provisioning points at the dashboard mount.
#[test]
fn docker_compose_setup_is_consistent() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("docker/compose.yaml")).unwrap()).unwrap();
    let services = &compose["services"];
    let mut targets = Vec::new();
    for name in ["postgres", "pgark", "prometheus", "grafana"] {
        let svc = &services[name];
        assert!(svc.is_mapping(), "service {name} missing from docker/compose.yaml");
        for v in svc["volumes"].as_sequence().into_iter().flatten() {
            let spec = v.as_str().unwrap();
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if src.starts_with('.') {
                assert!(repo("docker").join(src).exists(), "{name} mounts {src}, which does not exist");
            }
            targets.push((src.to_string(), dst.to_string()));
        }
    }
    let build = &services["pgark"]["build"];
    let context = repo("docker").join(build["context"].as_str().unwrap());
    let dockerfile = std::fs::read_to_string(context.join(build["dockerfile"].as_str().unwrap())).unwrap();
    // The image's build copies every file the crate compiles in (`include_str!` of the README
    // for the metrics' HELP text, say): otherwise `docker compose up --build` fails to compile.
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .collect();
    for src in files_under(&repo("src")) {
        let text = std::fs::read_to_string(&src).unwrap();
        let after = |m: &'static str| text.split(m).skip(1).collect::<Vec<_>>();
        for piece in after("include_str!(\"").into_iter().chain(after("include_bytes!(\"")) {
            let rel = piece.split('"').next().unwrap();
            let file = src.parent().unwrap().join(rel);
            let file = std::fs::canonicalize(&file).unwrap_or(file);
            let root = std::fs::canonicalize(repo("")).unwrap();
            let rel_to_root = file.strip_prefix(&root).unwrap().to_string_lossy().to_string();
            let top = rel_to_root.split('/').next().unwrap().to_string();
            assert!(
                copied
                    .iter()
                    .any(|c| c.trim_end_matches('/').trim_start_matches("./") == top || *c == rel_to_root),
                "{} compiles in {rel_to_root}, which docker/Dockerfile does not COPY (copies: {copied:?})",
                src.display()
            );
        }
    }
    let mounted = |dst: &str| targets.iter().find(|(_, d)| d == dst).map(|(s, _)| s.clone());
    // pgark's config: valid, and listening where Prometheus scrapes it.
    assert_eq!(mounted("/etc/pgark/pgark.yaml").as_deref(), Some("./pgark.yaml"));
    let cfg = pgark::config::Config::load(&repo("docker/pgark.yaml")).unwrap();
    let prom: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(repo("docker/prometheus.yml")).unwrap()).unwrap();
    let target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(
        prom["scrape_configs"][0]["job_name"], "pgark",
        "the rules' PgarkDaemonDown expects job=\"pgark\""
    );
    assert_eq!(
        target.rsplit(':').next(),
        cfg.metrics_listen.rsplit(':').next(),
        "Prometheus scrapes the port pgark listens on"
    );
    // The rules file Prometheus loads is the one compose mounts from grafana/.
    let rules = prom["rule_files"][0].as_str().unwrap();
    assert_eq!(mounted(rules).as_deref(), Some("../grafana/pgark-alerts.yml"));
    // Grafana: the provider's path is where the dashboards are mounted.
    let provider: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo("grafana/provisioning/dashboards/pgark.yml")).unwrap()).unwrap();
    let path = provider["providers"][0]["options"]["path"].as_str().unwrap();
    assert_eq!(mounted(path).as_deref(), Some("../grafana/dashboards"));
}
