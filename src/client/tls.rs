//! TLS for PostgreSQL connections with rustls, following libpq's sslmode semantics.
//!
//! | sslmode     | encrypt            | verify chain | verify host name |
//! |-------------|--------------------|--------------|------------------|
//! | disable     | no                 |              |                  |
//! | allow       | only if plain fails| no           | no               |
//! | prefer      | if the server can  | no           | no               |
//! | require     | yes                | only if a root certificate file exists (as libpq) | no |
//! | verify-ca   | yes                | yes          | no               |
//! | verify-full | yes                | yes          | yes              |

use super::conninfo::{ConnInfo, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration the connection string asks for.
pub fn client_config(ci: &ConnInfo) -> Result<Arc<ClientConfig>, String> {
    let root_file = ci.sslrootcert.as_deref().filter(|p| p.exists());
    let verifier: Arc<dyn ServerCertVerifier> = match ci.sslmode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let file = root_file.ok_or_else(|| {
                format!(
                    "sslmode={} needs a root certificate: set sslrootcert (looked for {})",
                    if ci.sslmode == SslMode::VerifyCa {
                        "verify-ca"
                    } else {
                        "verify-full"
                    },
                    ci.sslrootcert
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.postgresql/root.crt".into())
                )
            })?;
            let webpki = webpki_verifier(file)?;
            if ci.sslmode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(IgnoreHostName(webpki))
            }
        }
        SslMode::Require if root_file.is_some() => Arc::new(IgnoreHostName(webpki_verifier(root_file.expect("checked"))?)),
        _ => Arc::new(AcceptAnyCertificate(provider())),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let cert = ci.sslcert.as_deref().filter(|p| p.exists());
    let key = ci.sslkey.as_deref().filter(|p| p.exists());
    let config = match (cert, key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| format!("client certificate {}: {e}", cert.display()))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the certificate must carry: the host as written (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("host {host:?} is not a valid TLS server name: {e}"))
}

fn webpki_verifier(root_file: &Path) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(root_file)? {
        roots
            .add(cert)
            .map_err(|e| format!("root certificate {}: {e}", root_file.display()))?;
    }
    let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("root certificate {}: {e}", root_file.display()))?;
    Ok(v)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("reading certificate {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &data[..]).collect();
    let certs = certs.map_err(|e| format!("parsing certificate {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("certificate file {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = std::fs::read(path).map_err(|e| format!("reading private key {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut &data[..])
        .map_err(|e| format!("parsing private key {}: {e}", path.display()))?
        .ok_or_else(|| format!("key file {} holds no PEM private key", path.display()))
}

/// Encrypts without authenticating the server (sslmode prefer/require without a root file),
/// exactly as libpq does. Handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to the root, but the host name is not checked.
#[derive(Debug)]
struct IgnoreHostName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(TlsError::InvalidCertificate(CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The `tls-server-end-point` channel-binding data of a server certificate (RFC 5929 section
/// 4.1): the certificate's DER hashed with the hash of its signature algorithm, SHA-256 when that
/// is MD5 or SHA-1 (or RSASSA-PSS, whose hash sits in parameters we do not read; PSS server
/// certificates are rare). Ed25519 and other algorithms without a hash have no such binding, as in
/// libpq.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    use sha2::Digest;
    let oid = signature_algorithm_oid(cert_der).ok_or("the server's certificate could not be parsed for channel binding")?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        [rsa @ .., last] if rsa == RSA => match last {
            0x0c => 384,
            0x0d => 512,
            0x0e => 224,
            0x04 | 0x05 | 0x0a | 0x0b => 256,
            _ => 0,
        },
        [ec @ .., 0x03, n] if ec == ECDSA => match n {
            0x02 => 256,
            0x03 => 384,
            0x04 => 512,
            _ => 0,
        },
        [ec @ .., 0x01] if ec == ECDSA => 256,
        _ => 0,
    };
    match hash {
        224 => Ok(sha2::Sha224::digest(cert_der).to_vec()),
        256 => Ok(sha2::Sha256::digest(cert_der).to_vec()),
        384 => Ok(sha2::Sha384::digest(cert_der).to_vec()),
        512 => Ok(sha2::Sha512::digest(cert_der).to_vec()),
        _ => Err(format!(
            "the server's certificate is signed with an algorithm (OID bytes {}) that has no tls-server-end-point channel binding",
            oid.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )),
    }
}

/// One DER element at the start of `b`: (tag, contents, rest).
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, &x| (acc << 8) | x as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, ... }`:
/// the OID of the signature algorithm.
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der_element(cert)? else { return None };
    let (0x30, _, after_tbs) = der_element(body)? else { return None };
    let (0x30, alg, _) = der_element(after_tbs)? else { return None };
    let (0x06, oid, _) = der_element(alg)? else { return None };
    Some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut alg_seq = vec![0x30, alg.len() as u8];
        alg_seq.extend(alg);
        let mut body = tbs.to_vec();
        body.extend(alg_seq);
        body.extend([0x03, 0x01, 0x00]);
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        use sha2::Digest;
        let rsa256 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]);
        assert_eq!(tls_server_end_point(&rsa256).unwrap(), sha2::Sha256::digest(&rsa256).to_vec());
        let sha1 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(tls_server_end_point(&sha1).unwrap().len(), 32, "SHA-1 is replaced by SHA-256");
        let ec384 = cert_with(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(tls_server_end_point(&ec384).unwrap(), sha2::Sha384::digest(&ec384).to_vec());
        let rsa512 = cert_with(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]);
        assert_eq!(tls_server_end_point(&rsa512).unwrap().len(), 64);
        assert!(tls_server_end_point(&cert_with(&[0x2b, 0x65, 0x70])).is_err(), "ed25519");
        assert!(tls_server_end_point(b"\x30\x80garbage").is_err());
        assert!(tls_server_end_point(&[]).is_err());
    }
}
