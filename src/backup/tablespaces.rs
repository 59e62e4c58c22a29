//! Tablespace names, which BASE_BACKUP does not send.

use crate::client::conninfo::ConnInfo;
use crate::client::Connection;
use std::time::Duration;

/// Tablespace names by oid, read over an ordinary connection (BASE_BACKUP sends only oids), so
/// that a restore can remap tablespaces by name. Best effort: a role or pg_hba.conf that allows
/// only replication connections just means names are not recorded.
pub async fn tablespace_names(server: &str, conninfo: &ConnInfo) -> std::collections::BTreeMap<u32, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut ci = conninfo.clone();
    if ci.dbname.is_none() {
        ci.dbname = Some("postgres".into());
    }
    let attempt = async {
        let mut c = Connection::connect(&ci, false).await?;
        let r = c.simple_query("SELECT oid, spcname FROM pg_catalog.pg_tablespace").await;
        c.terminate().await;
        r
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(results)) => {
            for r in results {
                for i in 0..r.rows.len() {
                    if let (Some(oid), Some(name)) = (r.text(i, 0).and_then(|o| o.parse().ok()), r.text(i, 1)) {
                        out.insert(oid, name);
                    }
                }
            }
        }
        Ok(Err(e)) => tracing::debug!(server = %server, error = %e, "tablespace names not recorded"),
        Err(_) => tracing::debug!(server = %server, "tablespace names not recorded: timed out"),
    }
    out
}
