//! A sans-IO, incremental reader of the ustar archives PostgreSQL sends in BASE_BACKUP: bytes go
//! in as they arrive from the network, entry headers and file data come out, nothing is buffered
//! beyond one 512-byte header.
//!
//! PostgreSQL writes plain POSIX ustar (no pax, no GNU long names; names are at most 99 bytes)
//! with octal numbers, or GNU base-256 for sizes of 8 GiB and more. 13 and 14 omit the two
//! closing zero blocks, 15+ send them: both end cleanly here. Anything else is refused with the
//! offset and the reason, since the stream comes from the network.

const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative path as sent, without a trailing `/`.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    /// Symlink target (tablespace location) for symlinks.
    pub link_target: Option<String>,
}

/// What the parser reports while it consumes bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    Entry(TarEntry),
    /// File data of the current entry, in order.
    Data(&'a [u8]),
    /// The current file's data is complete.
    EntryEnd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tar stream at byte {offset}: {reason}")]
pub struct TarError {
    pub offset: u64,
    pub reason: String,
}

#[derive(Debug)]
enum State {
    Header,
    /// `remaining` data bytes, then `padding` bytes of zeros.
    Data {
        remaining: u64,
        padding: usize,
    },
    Padding(usize),
    /// One zero block seen; a second one (or the end of the stream) closes the archive.
    EndMarker,
    Finished,
}

pub struct TarParser {
    state: State,
    header: Vec<u8>,
    offset: u64,
}

impl Default for TarParser {
    fn default() -> Self {
        Self::new()
    }
}

impl TarParser {
    pub fn new() -> Self {
        TarParser {
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            offset: 0,
        }
    }

    /// Consumes `data`, calling `sink` for each event. Stops at the first error (from the data or
    /// from the sink).
    pub fn push<E: From<TarError>>(&mut self, mut data: &[u8], sink: &mut impl FnMut(TarEvent<'_>) -> Result<(), E>) -> Result<(), E> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header | State::EndMarker => {
                    let take = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.header.len() < BLOCK {
                        continue;
                    }
                    let block = std::mem::take(&mut self.header);
                    if block.iter().all(|&b| b == 0) {
                        self.state = match self.state {
                            State::Header => State::EndMarker,
                            _ => State::Finished,
                        };
                        continue;
                    }
                    if matches!(self.state, State::EndMarker) {
                        return Err(self.err("data after the end-of-archive block").into());
                    }
                    let entry = parse_header(&block).map_err(|reason| self.err_at(self.offset - BLOCK as u64, reason))?;
                    let is_file = entry.kind == EntryKind::File;
                    let size = if is_file { entry.size } else { 0 };
                    let padding = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
                    sink(TarEvent::Entry(entry))?;
                    if size == 0 {
                        if is_file {
                            // Empty files are closed too, so every file gets an EntryEnd.
                            sink(TarEvent::EntryEnd)?;
                        }
                        self.state = State::Header;
                    } else {
                        self.state = State::Data { remaining: size, padding };
                    }
                    self.header = block;
                    self.header.clear();
                }
                State::Data { remaining, padding } => {
                    let take = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    let pad = *padding;
                    self.offset += take as u64;
                    sink(TarEvent::Data(&data[..take]))?;
                    data = &data[take..];
                    if done {
                        sink(TarEvent::EntryEnd)?;
                        self.state = if pad > 0 { State::Padding(pad) } else { State::Header };
                    }
                }
                State::Padding(left) => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Finished => return Err(self.err("data after the end of the archive").into()),
            }
        }
        Ok(())
    }

    /// Checks that the archive ended on an entry boundary (with or without the closing blocks).
    pub fn finish(&self) -> Result<(), TarError> {
        match self.state {
            State::Header if self.header.is_empty() => Ok(()),
            State::EndMarker if self.header.is_empty() => Ok(()),
            State::Finished => Ok(()),
            _ => Err(self.err("archive truncated in the middle of an entry")),
        }
    }

    pub fn bytes_consumed(&self) -> u64 {
        self.offset
    }

    fn err(&self, reason: &str) -> TarError {
        self.err_at(self.offset, reason.to_string())
    }

    fn err_at(&self, offset: u64, reason: String) -> TarError {
        TarError { offset, reason }
    }
}

fn field_str(block: &[u8], at: usize, len: usize) -> Result<String, String> {
    let raw = &block[at..at + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    String::from_utf8(raw[..end].to_vec()).map_err(|_| format!("header field at {at} is not UTF-8"))
}

fn field_num(block: &[u8], at: usize, len: usize, what: &str) -> Result<u64, String> {
    let raw = &block[at..at + len];
    if raw[0] & 0x80 != 0 {
        // GNU base-256: the remaining bytes, big-endian (0xff first would be negative). Fields
        // of 8 bytes (mode, uid, gid) hold 7 value bytes, those of 12 (size, mtime) 11, of which
        // the high 3 must be zero for a u64.
        let body = &raw[1..];
        let high = body.len().saturating_sub(8);
        if raw[0] != 0x80 || body[..high].iter().any(|&b| b != 0) {
            return Err(format!("{what}: base-256 value out of range"));
        }
        return Ok(body[high..].iter().fold(0u64, |acc, &b| (acc << 8) | b as u64));
    }
    let text: String = raw
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect::<String>()
        .trim()
        .to_string();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(&text, 8).map_err(|_| format!("{what}: {text:?} is not an octal number"))
}

fn parse_header(block: &[u8]) -> Result<TarEntry, String> {
    if &block[257..262] != b"ustar" {
        return Err("not a ustar header (magic missing)".into());
    }
    let stored_sum = field_num(block, 148, 8, "checksum")?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' as u64 } else { b as u64 })
        .sum();
    if sum != stored_sum {
        return Err(format!("header checksum mismatch (stored {stored_sum}, computed {sum})"));
    }
    let mut path = field_str(block, 0, 100)?;
    let prefix = field_str(block, 345, 155)?;
    if !prefix.is_empty() {
        path = format!("{prefix}/{path}");
    }
    let kind = match block[156] {
        b'0' | 0 => EntryKind::File,
        b'5' => EntryKind::Directory,
        b'2' => EntryKind::Symlink,
        other => return Err(format!("entry {path:?}: unsupported type {:?}", other as char)),
    };
    let path = path.trim_end_matches('/').to_string();
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(format!("entry name {path:?} is not a plain relative path"));
    }
    let link_target = if kind == EntryKind::Symlink {
        Some(field_str(block, 157, 100)?)
    } else {
        None
    };
    Ok(TarEntry {
        path,
        kind,
        mode: field_num(block, 100, 8, "mode")? as u32 & 0o7777,
        size: field_num(block, 124, 12, "size")?,
        mtime: field_num(block, 136, 12, "mtime")? as i64,
        link_target,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn base_256_numbers_in_short_and_long_fields() {
        // An 8-byte field (mode, uid, gid): 7 value bytes. This once panicked on a slice index
        // (found by tests/parsers.rs on random headers).
        let mut b = [0u8; 20];
        b[0] = 0x80;
        b[7] = 0x2a;
        assert_eq!(field_num(&b, 0, 8, "uid"), Ok(42));
        // A 12-byte field (size): 11 bytes, the high 3 zero.
        let mut b = [0u8; 12];
        b[0] = 0x80;
        b[11] = 1;
        b[4] = 1;
        assert_eq!(field_num(&b, 0, 12, "size"), Ok((1 << 56) + 1));
        b[3] = 1;
        assert!(field_num(&b, 0, 12, "size").is_err());
        b[0] = 0xff;
        assert!(field_num(&b, 0, 12, "size").is_err());
    }

    /// Builds a ustar header as PostgreSQL does (used by tests here and elsewhere).
    pub fn header(name: &str, kind: u8, size: u64, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600 ");
        h[108..116].copy_from_slice(b"0000000 ");
        h[116..124].copy_from_slice(b"0000000 ");
        h[124..136].copy_from_slice(format!("{size:011o} ").as_bytes());
        h[136..148].copy_from_slice(b"14000000000 ");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    pub fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = header("base", b'5', 0, "");
        for (name, data) in files {
            out.extend(header(name, b'0', data.len() as u64, ""));
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend(header("pg_tblspc/16394", b'2', 0, "/srv/ts1"));
        out
    }

    fn collect(bytes: &[u8], step: usize) -> Result<Vec<(String, Vec<u8>)>, TarError> {
        let mut p = TarParser::new();
        let mut out: Vec<(String, Vec<u8>)> = vec![];
        for piece in bytes.chunks(step) {
            p.push(piece, &mut |ev: TarEvent<'_>| -> Result<(), TarError> {
                match ev {
                    TarEvent::Entry(e) => out.push((format!("{:?}:{}:{:?}", e.kind, e.path, e.link_target), vec![])),
                    TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                    TarEvent::EntryEnd => {}
                }
                Ok(())
            })?;
        }
        p.finish()?;
        Ok(out)
    }

    #[test]
    fn parses_in_any_piece_size_with_or_without_end_blocks() {
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let files: [(&str, &[u8]); 3] = [("backup_label", b"START WAL LOCATION"), ("base/5/16384", &big), ("empty", b"")];
        let mut a = archive(&files);
        for with_end in [false, true] {
            if with_end {
                a.extend(vec![0u8; 1024]);
            }
            for step in [1, 7, 512, 513, 100_000] {
                let got = collect(&a, step).unwrap();
                assert_eq!(got.len(), 5);
                assert_eq!(got[0].0, "Directory:base:None");
                assert_eq!(got[2], ("File:base/5/16384:None".into(), big.clone()));
                assert_eq!(got[3], ("File:empty:None".into(), vec![]));
                assert_eq!(got[4].0, "Symlink:pg_tblspc/16394:Some(\"/srv/ts1\")");
            }
        }
    }

    #[test]
    fn refuses_corruption_and_truncation() {
        let files: [(&str, &[u8]); 1] = [("f", b"hello")];
        let a = archive(&files);
        let mut bad = a.clone();
        bad[512 + 10] ^= 1;
        assert!(collect(&bad, 512).unwrap_err().reason.contains("checksum"));
        assert!(collect(&a[..512 + 512 + 3], 512).unwrap_err().reason.contains("truncated"));
        let evil = header("../etc/passwd", b'0', 0, "");
        assert!(collect(&evil, 512).unwrap_err().reason.contains("relative"));
        let mut garbage = vec![0x41u8; 512];
        garbage[0] = b'x';
        assert!(collect(&garbage, 512).unwrap_err().reason.contains("ustar"));
    }

    #[test]
    fn base256_size() {
        let mut h = header("big", b'0', 0, "");
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(parse_header(&h).unwrap().size, 4096);
    }
}
