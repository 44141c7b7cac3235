//! Byte encoding shared by the log and the layer files: little-endian integers, length-
//! prefixed keys and values, and a reader that never panics on short input.
//!
//! One entry, as both the log and layer blocks store it:
//!
//! ```text
//! key length u16 | key | seq u64 | value length u32 (u32::MAX: tombstone) | value
//! ```

use bytes::{BufMut, Bytes};

/// A value length that marks a tombstone.
const TOMBSTONE: u32 = u32::MAX;

/// One version of one key: a value, or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The seq that wrote it.
    pub seq: u64,
    /// The value; `None` for a delete.
    pub value: Option<Bytes>,
}

impl Entry {
    /// Bytes this entry takes encoded.
    #[cfg(test)]
    pub fn encoded_len(&self) -> usize {
        2 + self.key.len() + 8 + 4 + self.value.as_ref().map_or(0, Bytes::len)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_entry(out, &self.key, self.seq, self.value.as_deref());
    }
}

/// Appends one entry's encoding.
pub fn put_entry(out: &mut Vec<u8>, key: &[u8], seq: u64, value: Option<&[u8]>) {
    // Keys are at most MAX_KEY_BYTES (1 KiB), values at most 1 MiB: both fit.
    out.put_u16_le(key.len() as u16);
    out.put_slice(key);
    out.put_u64_le(seq);
    match value {
        Some(v) => {
            out.put_u32_le(v.len() as u32);
            out.put_slice(v);
        }
        None => out.put_u32_le(TOMBSTONE),
    }
}

/// Reads from a shared buffer; every getter returns `None` past the end, never panics.
/// Keys and values come back as slices of the buffer (no copy).
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// A reader at the start of `buf`.
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.take(N)?;
        b[..].try_into().ok()
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|a| a[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Option<Bytes> {
        self.take(n)
    }

    /// A key with its `u16` length.
    pub fn key(&mut self) -> Option<Bytes> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// One [`Entry`].
    pub fn entry(&mut self) -> Option<Entry> {
        let key = self.key()?;
        let seq = self.u64()?;
        let value = match self.u32()? {
            TOMBSTONE => None,
            n => Some(self.take(n as usize)?),
        };
        Some(Entry { key, seq, value })
    }
}

/// CRC-32 (IEEE) of `data`: every log record, layer block, index and the manifest carry one.
pub fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn entries_round_trip_and_short_input_is_none() {
        let mut out = Vec::new();
        put_entry(&mut out, b"k1", 7, Some(b"value"));
        put_entry(&mut out, b"k2", 8, None);
        let mut r = Reader::new(Bytes::from(out.clone()));
        let a = r.entry().unwrap();
        assert_eq!(
            (&a.key[..], a.seq, a.value.as_deref()),
            (&b"k1"[..], 7, Some(&b"value"[..]))
        );
        let b = r.entry().unwrap();
        assert_eq!((&b.key[..], b.seq, b.value), (&b"k2"[..], 8, None));
        assert!(r.is_empty());
        // Every truncation of the first entry reads as None, never a panic.
        for cut in 0..a.encoded_len() {
            let mut r = Reader::new(Bytes::copy_from_slice(&out[..cut]));
            assert_eq!(r.entry(), None, "cut at {cut}");
        }
    }
}
