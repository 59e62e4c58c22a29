//! A cluster with TLS and a role per authentication method, from a test CA made with openssl.

use super::pg;
use super::pgcluster::{chown_postgres, Cluster};
use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed for the TLS tests");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A cluster with TLS (a certificate for `localhost` from the test CA `ca.crt`; another CA,
/// `otherca.crt`, beside it in the returned directory) and one role per authentication method,
/// each allowed to replicate over TCP: `trust_user` (trust), `md5_user` (md5, `md5pass`),
/// `scram_user` (SCRAM, `scram pass`), `clear_user` (password, `clearpass`) and `tls_user`
/// (SCRAM over TLS only, `tlspass`). Started.
pub fn tls_cluster() -> (Cluster, tempfile::TempDir) {
    let bins = pg();
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_ca(d, "ca");
    make_ca(d, "otherca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let c = Cluster::init(&bins, &["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]).unwrap();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(d.join(f), c.data.join(f)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(c.data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        chown_postgres(&c.data.join(f)).unwrap();
    }
    c.write_hba(
        "local all all trust\n\
         host replication trust_user 127.0.0.1/32 trust\n\
         host replication md5_user 127.0.0.1/32 md5\n\
         host replication scram_user 127.0.0.1/32 scram-sha-256\n\
         host replication clear_user 127.0.0.1/32 password\n\
         hostssl replication tls_user 127.0.0.1/32 scram-sha-256\n\
         hostnossl replication tls_user 127.0.0.1/32 reject\n",
    )
    .unwrap();
    c.start().unwrap();
    c.psql(
        "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5pass';
         SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram pass';
         CREATE ROLE trust_user LOGIN REPLICATION; CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clearpass';
         CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 'tlspass';",
    )
    .unwrap();
    (c, certs)
}
