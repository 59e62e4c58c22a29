//! Small `std::io` adapters.

use std::io;

/// Counts the bytes written through it (a stored size, for statistics and metrics).
pub struct CountingWriter<'a> {
    inner: &'a mut dyn io::Write,
    count: u64,
}

impl<'a> CountingWriter<'a> {
    pub fn new(inner: &'a mut dyn io::Write) -> Self {
        CountingWriter { inner, count: 0 }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl io::Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
