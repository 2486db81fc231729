//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//!
//! Fed whatever bytes have arrived; consumes them, appends chunk data to the caller's
//! body buffer, and remembers where it stopped, so a body dribbled one byte at a time
//! costs O(bytes), not O(bytes²). Chunk extensions and trailers are read and dropped,
//! each bounded so a client cannot stream them forever.

/// Longest chunk-size line extension or trailer section we read before refusing.
const MAX_META: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8 },
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// 400: not valid chunked framing.
    Malformed,
    /// 413: the decoded body would exceed the limit.
    TooLarge,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    meta: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            remaining: 0,
            meta: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes bytes of `input`, appending body data to `out` (never past `max` bytes in
    /// total). Returns how many input bytes were consumed; stops at the end of the body.
    pub fn decode(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max: u64,
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            let b = input[i];
            match self.state {
                State::Size { digits } => {
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 15 {
                            return Err(ChunkError::Malformed);
                        }
                        self.remaining = self.remaining * 16 + u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::Malformed);
                    } else {
                        match b {
                            b';' | b' ' | b'\t' => self.state = State::Ext,
                            b'\r' => self.state = State::SizeLf,
                            b'\n' => self.end_size_line(out.len() as u64, max)?,
                            _ => return Err(ChunkError::Malformed),
                        }
                    }
                    i += 1;
                }
                State::Ext => {
                    self.meta += 1;
                    if self.meta > MAX_META {
                        return Err(ChunkError::Malformed);
                    }
                    if b == b'\n' {
                        self.end_size_line(out.len() as u64, max)?;
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.end_size_line(out.len() as u64, max)?;
                    i += 1;
                }
                State::Data => {
                    let n = (input.len() - i).min(self.remaining as usize);
                    out.extend_from_slice(&input[i..i + n]);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    self.state = match b {
                        b'\r' => State::DataLf,
                        b'\n' => State::Size { digits: 0 },
                        _ => return Err(ChunkError::Malformed),
                    };
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::TrailerStart => {
                    self.state = match b {
                        b'\r' => State::TrailerLf,
                        b'\n' => State::Done,
                        _ => State::TrailerLine,
                    };
                    i += 1;
                }
                State::TrailerLine => {
                    self.meta += 1;
                    if self.meta > MAX_META {
                        return Err(ChunkError::Malformed);
                    }
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed);
                    }
                    self.state = State::Done;
                    i += 1;
                }
                State::Done => unreachable!("loop condition excludes Done"),
            }
        }
        Ok(i)
    }

    fn end_size_line(&mut self, have: u64, max: u64) -> Result<(), ChunkError> {
        self.meta = 0;
        if self.remaining == 0 {
            self.state = State::TrailerStart;
        } else if have.saturating_add(self.remaining) > max {
            return Err(ChunkError::TooLarge);
        } else {
            self.state = State::Data;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: u64) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = vec![];
        let n = d.decode(input, &mut out, max)?;
        assert!(
            d.is_done(),
            "not done after {:?}",
            String::from_utf8_lossy(input)
        );
        Ok((out, n))
    }

    #[test]
    fn table() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\nhello\n0\n\n", b"hello"),
            (
                b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n",
                b"abcde",
            ),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"0\r\n\r\n", b""),
        ];
        for (input, body) in ok {
            let (out, n) = decode_all(input, 1 << 20).unwrap();
            assert_eq!((&out[..], n), (*body, input.len()));
        }
        let bad: &[&[u8]] = &[
            b"x\r\n",
            b"\r\n",
            b"5\r\nhelloX",
            b"1\r\na\r0",
            b"10000000000000000\r\n",
        ];
        for input in bad {
            let mut d = ChunkedDecoder::new();
            assert_eq!(
                d.decode(input, &mut vec![], 1 << 20),
                Err(ChunkError::Malformed),
                "{input:?}"
            );
        }
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.decode(b"6\r\nhello!\r\n", &mut vec![], 5),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let input = b"3;e\r\nabc\r\n11\r\n0123456789abcdefg\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new();
        let mut out = vec![];
        let mut consumed = 0;
        for i in 0..input.len() {
            if d.is_done() {
                break;
            }
            consumed += d.decode(&input[i..i + 1], &mut out, 1 << 20).unwrap();
        }
        assert!(d.is_done());
        assert_eq!(out, b"abc0123456789abcdefg");
        assert_eq!(&input[consumed..], b"NEXT", "stops at the end of the body");
    }
}
