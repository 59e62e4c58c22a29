//! Authentication and TLS against a real server: trust, cleartext, md5, SCRAM (right and wrong
//! password), TLS require / verify-ca / verify-full against a test CA, and .pgpass.

use crate::support::*;
use pgark::client::{ClientError, ConnInfo, Connection};

async fn try_connect(conninfo: &str) -> Result<Connection, ClientError> {
    let ci = ConnInfo::parse(conninfo).unwrap();
    let mut conn = Connection::connect(&ci, true).await?;
    conn.identify_system().await?;
    Ok(conn)
}

#[test]
fn auth_methods_and_tls_modes() {
    let (c, certs) = tls_cluster();
    let port = c.port;
    let ca = certs.path().join("ca.crt");
    let other = certs.path().join("otherca.crt");
    let nocert = certs.path().join("absent.crt");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let base = format!("host=127.0.0.1 port={port} sslrootcert={}", nocert.display());
        let ok = |s: String| async move { try_connect(&s).await.unwrap_or_else(|e| panic!("{s}: {e}")) };
        ok(format!("{base} user=trust_user sslmode=disable")).await;
        ok(format!("{base} user=md5_user password=md5pass sslmode=disable")).await;
        ok(format!("{base} user=scram_user password='scram pass' sslmode=disable")).await;
        ok(format!("{base} user=clear_user password=clearpass sslmode=disable")).await;
        for (user, pw) in [("md5_user", "nope"), ("scram_user", "nope"), ("clear_user", "nope")] {
            let e = try_connect(&format!("{base} user={user} password={pw} sslmode=disable"))
                .await
                .err()
                .expect("wrong password accepted");
            assert!(matches!(e, ClientError::Auth(_)), "{user}: {e}");
            assert!(e.to_string().contains("password authentication failed"), "{user}: {e}");
        }
        let e = try_connect(&format!("{base} user=scram_user sslmode=disable")).await.err().unwrap();
        assert!(
            e.to_string().contains("no password") || e.to_string().contains("none is configured"),
            "{e}"
        );

        // TLS: the tls_user may only connect encrypted.
        let conn = ok(format!("{base} user=tls_user password=tlspass sslmode=require")).await;
        assert!(conn.encrypted);
        let conn = ok(format!("{base} user=tls_user password=tlspass sslmode=prefer")).await;
        assert!(conn.encrypted);
        let e = try_connect(&format!("{base} user=tls_user password=tlspass sslmode=disable"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Auth(_)), "{e}");
        // verify-full: the certificate names localhost only.
        ok(format!(
            "host=localhost port={port} user=tls_user password=tlspass sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await;
        let e = try_connect(&format!(
            "host=127.0.0.1 port={port} user=tls_user password=tlspass sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await
        .err()
        .unwrap();
        assert!(matches!(e, ClientError::Tls(_)), "host name mismatch must fail verify-full: {e}");
        ok(format!(
            "host=127.0.0.1 port={port} user=tls_user password=tlspass sslmode=verify-ca sslrootcert={}",
            ca.display()
        ))
        .await;
        let e = try_connect(&format!(
            "host=localhost port={port} user=tls_user password=tlspass sslmode=verify-full sslrootcert={}",
            other.display()
        ))
        .await
        .err()
        .unwrap();
        assert!(matches!(e, ClientError::Tls(_)), "a certificate from another CA must fail: {e}");
        let e = try_connect(&format!(
            "host=localhost port={port} user=tls_user password=tlspass sslmode=verify-full sslrootcert={}",
            nocert.display()
        ))
        .await
        .err()
        .unwrap();
        assert!(e.to_string().contains("root certificate"), "{e}");

        // Channel binding (audit finding 11): require works over TLS with SCRAM, and refuses
        // everything that would authenticate without it.
        let conn = ok(format!(
            "{base} user=tls_user password=tlspass sslmode=require channel_binding=require"
        ))
        .await;
        assert!(conn.encrypted);
        ok(format!(
            "{base} user=tls_user password=tlspass sslmode=require channel_binding=disable"
        ))
        .await;
        for (conninfo, why) in [
            (
                format!("{base} user=scram_user password='scram pass' sslmode=disable channel_binding=require"),
                "needs a TLS connection",
            ),
            (
                format!("{base} user=md5_user password=md5pass sslmode=require channel_binding=require"),
                "without SCRAM channel binding",
            ),
            (
                format!("{base} user=trust_user sslmode=require channel_binding=require"),
                "without SCRAM channel binding",
            ),
        ] {
            let e = try_connect(&conninfo)
                .await
                .err()
                .unwrap_or_else(|| panic!("{conninfo}: accepted without channel binding"));
            assert!(matches!(e, ClientError::Auth(_)) && e.to_string().contains(why), "{conninfo}: {e}");
        }

        // .pgpass (via passfile; PGPASSFILE is honoured the same way).
        let pass = certs.path().join("pgpass");
        std::fs::write(&pass, format!("127.0.0.1:{port}:replication:scram_user:scram pass\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        ok(format!("{base} user=scram_user passfile={} sslmode=disable", pass.display())).await;
    });
}

/// In the daemon: a server with a wrong password is reported in status, and another server in
/// the same daemon streams undisturbed; PGPASSFILE is honoured by `pgark serve`.
#[test]
fn auth_failure_on_one_server_does_not_disturb_another() {
    let (c, certs) = tls_cluster();
    let pass = certs.path().join("pgpass");
    std::fs::write(&pass, format!("*:{}:replication:scram_user:scram pass\n", c.port)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let good = format!("host=127.0.0.1 port={} user=scram_user sslmode=disable", c.port);
    let bad = format!("host=127.0.0.1 port={} user=md5_user password=wrong sslmode=disable", c.port);
    let yaml = server_yaml("good", &good, "synchronous: false") + &server_yaml("bad", &bad, "synchronous: false");
    let p = Pgark::start_env(&yaml, &[("PGPASSFILE", pass.to_str().unwrap())]);
    p.wait_streaming("good");
    wait_until(std::time::Duration::from_secs(30), "the bad server's error in status", || {
        p.server("bad")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("password authentication failed"))
    });
    write_rows(&c, 100);
    p.wait_flushed("good", current_flush_lsn(&c));
    assert_eq!(p.server("good").unwrap().reconnects, 0, "the good server was disturbed");
}
