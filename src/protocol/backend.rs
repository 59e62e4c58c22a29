//! Framing and decoding of backend (server to client) messages.
//!
//! `parse` is the whole codec: it takes complete frames off the front of a buffer and returns
//! `Ok(None)` when more bytes are needed. Bodies are split off as `Bytes` without copying, so a
//! 128 KiB XLogData payload goes from the socket buffer to `pwrite` untouched.

use super::ProtocolError;
use bytes::{Buf, Bytes, BytesMut};

/// Frames larger than this are refused: no legitimate replication reply comes near it, and a
/// hostile length must not make us allocate gigabytes.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The most `parse` reserves ahead for a frame still arriving.
const RESERVE_AHEAD: usize = 1 << 20;

/// The `Authentication*` request the server made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// GSS, SSPI, Kerberos: methods we do not speak; the code is kept for the error message.
    Unsupported(u32),
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerMessage {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (SQLSTATE {})", self.severity, self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// A decoded backend message. Only what a replication client needs is decoded in detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Authentication(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData,
    ReadyForQuery(u8),
    RowDescription(Vec<String>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(String),
    EmptyQueryResponse,
    Error(ServerMessage),
    Notice(ServerMessage),
    CopyInResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyData(Bytes),
    CopyDone,
    NegotiateProtocolVersion,
    /// NotificationResponse, ParameterDescription and other messages we ignore.
    Other(u8),
}

/// Takes one complete message off the front of `buf`, or returns `Ok(None)` if it is not all there.
pub fn parse(buf: &mut BytesMut) -> Result<Option<BackendMessage>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(ProtocolError::new(format!(
            "message {:?} has length {len}, below the minimum of 4",
            tag as char
        )));
    }
    if len > MAX_FRAME {
        return Err(ProtocolError::new(format!(
            "message {:?} claims {len} bytes, more than the {MAX_FRAME} accepted",
            tag as char
        )));
    }
    if buf.len() < len + 1 {
        // Room for what is missing, up to a megabyte: a length the peer claims never makes us
        // allocate more than the bytes it actually sends (plus this much).
        buf.reserve((len + 1 - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    decode(tag, body).map(Some)
}

fn decode(tag: u8, mut body: Bytes) -> Result<BackendMessage, ProtocolError> {
    let msg = match tag {
        b'R' => BackendMessage::Authentication(decode_auth(&mut body)?),
        b'S' => {
            let name = take_cstr(&mut body, "ParameterStatus name")?;
            let value = take_cstr(&mut body, "ParameterStatus value")?;
            BackendMessage::ParameterStatus { name, value }
        }
        b'K' => BackendMessage::BackendKeyData,
        b'Z' => {
            let status = take_u8(&mut body, "ReadyForQuery")?;
            BackendMessage::ReadyForQuery(status)
        }
        b'T' => {
            let n = take_u16(&mut body, "RowDescription")?;
            let mut cols = Vec::with_capacity((n as usize).min(body.len() / 19 + 1));
            for _ in 0..n {
                cols.push(take_cstr(&mut body, "RowDescription column name")?);
                need(&body, 18, "RowDescription column")?;
                body.advance(18);
            }
            BackendMessage::RowDescription(cols)
        }
        b'D' => {
            let n = take_u16(&mut body, "DataRow")?;
            let mut vals = Vec::with_capacity((n as usize).min(body.len() / 4 + 1));
            for _ in 0..n {
                let len = take_u32(&mut body, "DataRow value length")? as i32;
                if len < 0 {
                    vals.push(None);
                } else {
                    need(&body, len as usize, "DataRow value")?;
                    vals.push(Some(body.split_to(len as usize)));
                }
            }
            BackendMessage::DataRow(vals)
        }
        b'C' => BackendMessage::CommandComplete(take_cstr(&mut body, "CommandComplete tag")?),
        b'I' => BackendMessage::EmptyQueryResponse,
        b'E' => BackendMessage::Error(decode_fields(&mut body)?),
        b'N' => BackendMessage::Notice(decode_fields(&mut body)?),
        b'G' => BackendMessage::CopyInResponse,
        b'H' => BackendMessage::CopyOutResponse,
        b'W' => BackendMessage::CopyBothResponse,
        b'd' => return Ok(BackendMessage::CopyData(body)),
        b'c' => BackendMessage::CopyDone,
        b'v' => BackendMessage::NegotiateProtocolVersion,
        b'A' | b't' | b'n' | b's' | b'1' | b'2' | b'3' => BackendMessage::Other(tag),
        other => return Err(ProtocolError::new(format!("unknown message type byte 0x{other:02X}"))),
    };
    Ok(msg)
}

fn decode_auth(body: &mut Bytes) -> Result<AuthRequest, ProtocolError> {
    let code = take_u32(body, "Authentication code")?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            need(body, 4, "MD5 salt")?;
            let mut salt = [0u8; 4];
            body.copy_to_slice(&mut salt);
            AuthRequest::Md5Password { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = take_cstr(body, "SASL mechanism list")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(std::mem::take(body)),
        12 => AuthRequest::SaslFinal(std::mem::take(body)),
        other => AuthRequest::Unsupported(other),
    })
}

fn decode_fields(body: &mut Bytes) -> Result<ServerMessage, ProtocolError> {
    let mut m = ServerMessage::default();
    loop {
        let code = take_u8(body, "error field code")?;
        if code == 0 {
            break;
        }
        let value = take_cstr(body, "error field")?;
        match code {
            b'V' => m.severity = value,
            b'S' if m.severity.is_empty() => m.severity = value,
            b'C' => m.code = value,
            b'M' => m.message = value,
            b'D' => m.detail = Some(value),
            b'H' => m.hint = Some(value),
            _ => {}
        }
    }
    Ok(m)
}

fn need(body: &Bytes, n: usize, what: &str) -> Result<(), ProtocolError> {
    if body.remaining() < n {
        return Err(ProtocolError::new(format!(
            "{what}: message ends after {} of {n} bytes",
            body.remaining()
        )));
    }
    Ok(())
}

fn take_u8(body: &mut Bytes, what: &str) -> Result<u8, ProtocolError> {
    need(body, 1, what)?;
    Ok(body.get_u8())
}

fn take_u16(body: &mut Bytes, what: &str) -> Result<u16, ProtocolError> {
    need(body, 2, what)?;
    Ok(body.get_u16())
}

fn take_u32(body: &mut Bytes, what: &str) -> Result<u32, ProtocolError> {
    need(body, 4, what)?;
    Ok(body.get_u32())
}

fn take_cstr(body: &mut Bytes, what: &str) -> Result<String, ProtocolError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| ProtocolError::new(format!("{what}: string is not NUL-terminated")))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn needs_more_bytes_until_complete() {
        let full = frame(b'Z', b"I");
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(parse(&mut buf).unwrap(), None, "cut at {cut}");
        }
        let mut buf = BytesMut::from(&full[..]);
        assert_eq!(parse(&mut buf).unwrap(), Some(BackendMessage::ReadyForQuery(b'I')));
        assert!(buf.is_empty());
    }

    #[test]
    fn decodes_rows_and_errors() {
        let mut body = 2u16.to_be_bytes().to_vec();
        body.extend_from_slice(&3u32.to_be_bytes());
        body.extend_from_slice(b"abc");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let mut buf = BytesMut::from(&frame(b'D', &body)[..]);
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(BackendMessage::DataRow(vec![Some(Bytes::from_static(b"abc")), None]))
        );
        let mut buf = BytesMut::from(&frame(b'E', b"SERROR\0VERROR\0C58P01\0Mno such file\0\0")[..]);
        match parse(&mut buf).unwrap() {
            Some(BackendMessage::Error(e)) => {
                assert_eq!(e.code, "58P01");
                assert_eq!(e.message, "no such file");
                assert_eq!(e.severity, "ERROR");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![b'Z', 0, 0, 0, 3],                 // length below 4
            vec![b'd', 0x7F, 0xFF, 0xFF, 0xFF],     // absurd length
            frame(b'?', b""),                       // unknown type
            frame(b'S', b"name-without-nul"),       // unterminated string
            frame(b'D', &[0, 1, 0, 0, 0, 9, b'x']), // value longer than message
            frame(b'R', &[0, 0, 0, 5, 1]),          // short MD5 salt
            frame(b'T', &[0, 1, b'a', 0, 1, 2]),    // truncated column
            frame(b'Z', b""),                       // missing status byte
        ];
        for c in cases {
            let mut buf = BytesMut::from(&c[..]);
            assert!(parse(&mut buf).is_err(), "{c:?} should be refused");
        }
    }

    #[test]
    fn auth_requests() {
        let mut buf = BytesMut::from(&frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")[..]);
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(BackendMessage::Authentication(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }))
        );
        let mut buf = BytesMut::from(&frame(b'R', b"\0\0\0\x05abcd")[..]);
        assert_eq!(
            parse(&mut buf).unwrap(),
            Some(BackendMessage::Authentication(AuthRequest::Md5Password { salt: *b"abcd" }))
        );
    }
}
