//! SCRAM-SHA-256 client (RFC 5802 / RFC 7677) as PostgreSQL uses it, as a small state machine.
//!
//! The nonce is injected so that the exchange can be tested against a recorded one. PostgreSQL
//! takes the user name from the startup packet, so the client-first message carries `n=`.
//! Channel binding is not used (`n,,`), which PostgreSQL accepts over TLS as well.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The GS2 header for "no channel binding".
const GS2_HEADER: &str = "n,,";
/// PostgreSQL's own minimum would be 1; anything below 4096 is suspicious but allowed. We refuse
/// absurd counts that would stall the connection task for minutes.
const MAX_ITERATIONS: u32 = 10_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM server message: {0}")]
    Malformed(String),
    #[error("the server's SCRAM nonce does not extend ours")]
    NonceMismatch,
    #[error("the server's SCRAM signature is wrong: it does not know the password (possible impostor)")]
    BadServerSignature,
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

enum State {
    Initial,
    SentClientFirst,
    SentClientFinal { expected_server_signature: [u8; 32] },
    Done,
}

/// A client-side SCRAM-SHA-256 exchange.
pub struct ScramClient {
    password: Vec<u8>,
    client_first_bare: String,
    nonce: String,
    state: State,
}

impl ScramClient {
    /// Starts an exchange for `user` (empty for PostgreSQL) with a random nonce.
    pub fn new(user: &str, password: &str) -> Self {
        use rand::RngCore;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        Self::with_nonce(user, password, &B64.encode(raw))
    }

    /// Starts an exchange with a given nonce (tests replay recorded exchanges with it).
    pub fn with_nonce(user: &str, password: &str, nonce: &str) -> Self {
        // SASLprep; PostgreSQL uses the raw bytes when the password is not valid for it.
        let password = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.as_bytes().to_vec(),
        };
        let user = user.replace('=', "=3D").replace(',', "=2C");
        ScramClient {
            password,
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_string(),
            state: State::Initial,
        }
    }

    /// The client-first message.
    pub fn client_first(&mut self) -> Vec<u8> {
        self.state = State::SentClientFirst;
        format!("{GS2_HEADER}{}", self.client_first_bare).into_bytes()
    }

    /// Takes the server-first message and returns the client-final message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::SentClientFirst) {
            return Err(ScramError::OutOfOrder);
        }
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("server-first is not UTF-8".into()))?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed("salt is not base64".into()))?),
                Some(("i", v)) => {
                    iterations = Some(
                        v.parse::<u32>()
                            .map_err(|_| ScramError::Malformed(format!("iteration count {v:?}")))?,
                    )
                }
                Some(("m", _)) => return Err(ScramError::Malformed("mandatory extension not supported".into())),
                _ => {}
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) => (n, s, i),
            _ => return Err(ScramError::Malformed(format!("server-first {server_first:?} lacks r=, s= or i="))),
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Malformed(format!("iteration count {iterations} out of range")));
        }
        let salted = hi(&self.password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", B64.encode(GS2_HEADER));
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(client_signature) {
            *p ^= s;
        }
        let server_key = hmac(&salted, b"Server Key");
        self.state = State::SentClientFinal {
            expected_server_signature: hmac(&server_key, auth_message.as_bytes()),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server must prove it knows the password too.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::SentClientFinal { expected_server_signature } = self.state else {
            return Err(ScramError::OutOfOrder);
        };
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("server-final is not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(ScramError::Malformed(format!("server reported error {e:?}")));
        }
        let v = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or_else(|| ScramError::Malformed("server-final lacks v=".into()))?;
        let sig = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("server signature is not base64".into()))?;
        if sig != expected_server_signature {
            return Err(ScramError::BadServerSignature);
        }
        self.state = State::Done;
        Ok(())
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (RFC 5802's `Hi`).
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(password).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exchange recorded in RFC 7677 section 3.
    #[test]
    fn rfc7677_recorded_exchange() {
        let mut c = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first).unwrap();
        assert_eq!(
            String::from_utf8(fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
    }

    #[test]
    fn refuses_forged_server_signature_and_foreign_nonce() {
        let mut c = ScramClient::with_nonce("user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        c.client_first();
        c.client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            c.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
        let mut c = ScramClient::with_nonce("", "pw", "abc");
        c.client_first();
        assert_eq!(c.client_final(b"r=xyz123,s=QQ==,i=4096"), Err(ScramError::NonceMismatch));
        let mut c = ScramClient::with_nonce("", "pw", "abc");
        c.client_first();
        assert!(c.client_final(b"r=abcdef,s=!!,i=4096").is_err());
        assert!(c.client_final(b"garbage").is_err());
    }

    #[test]
    fn out_of_order_is_an_error() {
        let mut c = ScramClient::with_nonce("", "pw", "abc");
        assert_eq!(c.client_final(b"r=abcd,s=QQ==,i=1"), Err(ScramError::OutOfOrder));
        assert_eq!(c.verify_server_final(b"v=AA=="), Err(ScramError::OutOfOrder));
    }
}
