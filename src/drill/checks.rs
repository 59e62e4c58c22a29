//! What a drill asks the restored cluster, over its private Unix socket with pgark's own client:
//! whether recovery has ended and where, whether every database accepts connections, and the
//! configured `drill.sql` queries. `pg_amcheck` runs as a separate program (`run_amcheck`).

use crate::catalog::drill_record::{CheckRecord, RecoveredPoint};
use crate::client::connection::{ClientError, Connection};
use crate::client::conninfo::{ConnInfo, Host};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the restored cluster listens, and as whom to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
}

impl Endpoint {
    fn conninfo(&self, user: &str, db: &str) -> Result<ConnInfo, String> {
        let mut ci = ConnInfo::parse("host=/tmp sslmode=disable connect_timeout=10")?;
        ci.host = Host::Unix(self.socket_dir.clone());
        ci.port = self.port;
        ci.user = user.to_string();
        ci.dbname = Some(db.to_string());
        ci.password = None;
        ci.application_name = "pgark drill".into();
        Ok(ci)
    }

    pub async fn connect_as(&self, user: &str, db: &str) -> Result<Connection, ClientError> {
        let ci = self.conninfo(user, db).map_err(|m| ClientError::Io {
            context: "drill connection settings".into(),
            source: std::io::Error::other(m),
        })?;
        Connection::connect(&ci, false).await
    }

    pub async fn connect(&self, db: &str) -> Result<Connection, ClientError> {
        self.connect_as(&self.user, db).await
    }
}

/// The first column of the first row of the first result set.
async fn scalar(conn: &mut Connection, sql: &str) -> Result<Option<String>, String> {
    let r = conn.simple_query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    Ok(r.first().and_then(|r| r.text(0, 0)))
}

/// What a connection attempt during recovery tells.
pub enum Probe {
    /// Connected as this role (the bootstrap superuser), recovery over.
    Ready(String),
    /// Still starting or recovering (or the socket is not there yet).
    NotYet(String),
}

/// One attempt: connect as each candidate role (the restored cluster's roles are production's;
/// trust over the private socket lets any existing role in) to `postgres`, else `template1`;
/// once in, the bootstrap superuser (oid 10) is the role the checks use.
pub async fn probe(ep: &Endpoint, candidates: &[String]) -> Probe {
    let mut last = String::from("no connection attempt");
    for user in candidates {
        for db in ["postgres", "template1"] {
            match ep.connect_as(user, db).await {
                Ok(mut c) => {
                    let rec = scalar(&mut c, "SELECT pg_is_in_recovery()").await;
                    let su = scalar(&mut c, "SELECT rolname FROM pg_roles WHERE oid = 10").await;
                    c.terminate().await;
                    return match (rec, su) {
                        (Ok(Some(r)), Ok(Some(su))) if r == "f" => Probe::Ready(su),
                        (Ok(_), _) => Probe::NotYet("still in recovery".into()),
                        (Err(e), _) => Probe::NotYet(e),
                    };
                }
                // 57P03: the database system is starting up / not yet accepting connections.
                Err(e) if e.sqlstate() == Some("57P03") => return Probe::NotYet(e.to_string()),
                // The role or database does not exist: try the next.
                Err(e) if matches!(e.sqlstate(), Some("28000") | Some("3D000")) => last = e.to_string(),
                Err(e) => return Probe::NotYet(e.to_string()),
            }
        }
    }
    Probe::NotYet(format!("no candidate role could connect ({}): {last}", candidates.join(", ")))
}

/// Where recovery ended: replay LSN, the timeline after promotion, the last replayed commit.
pub async fn recovered_point(ep: &Endpoint) -> Result<RecoveredPoint, String> {
    let mut c = ep.connect("postgres").await.map_err(|e| e.to_string());
    if c.is_err() {
        c = ep.connect("template1").await.map_err(|e| e.to_string());
    }
    let mut c = c?;
    let lsn = scalar(&mut c, "SELECT pg_last_wal_replay_lsn()::text").await?;
    let tli = scalar(&mut c, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").await?;
    let time = scalar(&mut c, "SELECT pg_last_xact_replay_timestamp()::text").await?;
    c.terminate().await;
    Ok(RecoveredPoint {
        replay_lsn: lsn,
        timeline: tli.and_then(|t| u32::from_str_radix(&t, 16).ok()),
        last_commit_time: time,
    })
}

/// `SELECT 1` in every database that allows connections.
pub async fn connect_every_database(ep: &Endpoint) -> Result<Vec<CheckRecord>, String> {
    let mut c = ep.connect("template1").await.map_err(|e| format!("template1: {e}"))?;
    let r = c
        .simple_query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname")
        .await
        .map_err(|e| format!("listing the databases: {e}"))?;
    c.terminate().await;
    let names: Vec<String> = r
        .first()
        .map(|r| (0..r.rows.len()).filter_map(|i| r.text(i, 0)).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for db in names {
        let res = match ep.connect(&db).await {
            Ok(mut c) => {
                let r = scalar(&mut c, "SELECT 1").await;
                c.terminate().await;
                r.and_then(|v| {
                    if v.as_deref() == Some("1") {
                        Ok(())
                    } else {
                        Err(format!("SELECT 1 returned {v:?}"))
                    }
                })
            }
            Err(e) => Err(e.to_string()),
        };
        out.push(CheckRecord {
            name: format!("connect {db}"),
            ok: res.is_ok(),
            detail: res.err().unwrap_or_else(|| "SELECT 1 ok".into()),
            skipped: false,
        });
    }
    Ok(out)
}

/// Whether a query's answer passes: a first row whose first column is true, or for another
/// type anything but NULL.
pub fn passes(first: Option<Option<String>>) -> Result<(), String> {
    match first {
        None => Err("returned no row".into()),
        Some(None) => Err("returned NULL".into()),
        Some(Some(v)) if v == "f" => Err("returned false".into()),
        Some(Some(_)) => Ok(()),
    }
}

/// Each `drill.sql` query, in the `postgres` database (else `template1`), as the superuser,
/// bounded by `limit` each.
pub async fn run_sql(ep: &Endpoint, queries: &[String], limit: Duration) -> Vec<CheckRecord> {
    let mut out = Vec::new();
    for (i, q) in queries.iter().enumerate() {
        let res = async {
            let mut c = match ep.connect("postgres").await {
                Ok(c) => c,
                Err(_) => ep.connect("template1").await.map_err(|e| e.to_string())?,
            };
            c.set_io_timeout(limit);
            let r = c.simple_query(q).await.map_err(|e| e.to_string());
            c.terminate().await;
            let r = r?;
            passes(r.first().and_then(|r| r.rows.first().map(|_| r.text(0, 0))))
        }
        .await;
        out.push(CheckRecord {
            name: format!("sql[{i}]"),
            ok: res.is_ok(),
            detail: match res {
                Ok(()) => format!("{q}: ok"),
                Err(e) => format!("{q}: {e}"),
            },
            skipped: false,
        });
    }
    out
}

/// Resolves once `flag` is set (polled every 100 ms): raced against every wait of a drill, so
/// that a stopping daemon or a Ctrl-C never waits for a long query.
pub async fn interrupted(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `pg_amcheck --all` (heap and btree indexes of every database; `--install-missing` creates
/// the amcheck extension in the throwaway copy), its output in `output`. Skipped, and said so,
/// when the binaries have no `pg_amcheck`. `None`: interrupted (it was killed).
pub fn run_amcheck(bindir: &Path, ep: &Endpoint, output: &Path, flag: &AtomicBool) -> Option<CheckRecord> {
    let bin = bindir.join("pg_amcheck");
    let record = |ok: bool, detail: String, skipped: bool| CheckRecord {
        name: "pg_amcheck".into(),
        ok,
        detail,
        skipped,
    };
    if !bin.is_file() {
        return Some(record(
            true,
            format!(
                "skipped: {} not found (install the PostgreSQL client/contrib package of this major)",
                bin.display()
            ),
            true,
        ));
    }
    let spawned = std::fs::File::create(output)
        .and_then(|f| Ok((f.try_clone()?, f)))
        .and_then(|(out, err)| {
            Command::new(&bin)
                .arg("--all")
                .arg("--install-missing")
                .arg("--host")
                .arg(&ep.socket_dir)
                .arg("--port")
                .arg(ep.port.to_string())
                .arg("--username")
                .arg(&ep.user)
                .arg("--no-password")
                .env("PGAPPNAME", "pgark drill")
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
        });
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Some(record(false, format!("running {}: {e}", bin.display()), false)),
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if flag.load(Ordering::Relaxed) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Some(record(false, format!("waiting for {}: {e}", bin.display()), false)),
        }
    };
    if status.success() {
        return Some(record(true, "no corruption found (heap and btree, every database)".into(), false));
    }
    let text = std::fs::read_to_string(output).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    Some(record(
        false,
        format!(
            "{} ({status}): {}",
            bin.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        ),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_check_rule() {
        assert!(passes(None).unwrap_err().contains("no row"));
        assert!(passes(Some(None)).unwrap_err().contains("NULL"));
        assert!(passes(Some(Some("f".into()))).unwrap_err().contains("false"));
        assert!(passes(Some(Some("t".into()))).is_ok());
        assert!(passes(Some(Some("42".into()))).is_ok());
    }
}
