//! Incremental Server-Sent-Events parser (WHATWG "event stream interpretation").
//!
//! Pure and synchronous: feed it the body bytes as they arrive with
//! [`Parser::push`], split anywhere (inside a UTF-8 character, between CR
//! and LF, ...), and it appends every event those bytes complete. Work is
//! linear in the input: each byte is scanned for a line end once, and a
//! partial line is only ever appended to, never re-scanned.
//!
//! Differences from a browser's `EventSource`, on purpose: `id` and `retry`
//! are ignored, and a non-standard `error:` field (sent by older llama.cpp
//! servers) is kept in [`Event::error`].
//!
//! Bounded: a parser made [`Parser::with_limit`] never holds a line, or the
//! data of an event, longer than its limit. Input that would need more is
//! an [`Overflow`]: the parser stops (it ignores what follows) and
//! [`Parser::overflow`] reports it. Its buffers never grow past the limit
//! (their capacity included), whatever the input and however it is split.

use std::fmt;
use std::mem;

/// The UTF-8 byte order mark, dropped once at the very start of a stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Buffers grown past this by one huge line or event are shrunk back to it,
/// so a single 16 MiB line does not stay resident for the rest of the stream.
const KEEP_CAPACITY: usize = 64 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// value of the last `event:` field; empty string means the default ("message")
    pub event: String,
    /// data lines joined with '\n' (trailing LF removed as WHATWG says)
    pub data: String,
    /// value of a non-standard `error:` field (older llama.cpp servers send `error: {json}` lines), if any
    pub error: Option<String>,
}

/// Input the parser refused to hold: a line, or an event's data, longer
/// than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// Whether one line (`false`) or the data of one event (`true`) was too long.
    pub event: bool,
    /// The limit, in bytes.
    pub limit: usize,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.event { "event" } else { "line" };
        write!(f, "an SSE {what} over {} bytes", self.limit)
    }
}

impl std::error::Error for Overflow {}

/// Incremental parser state for one event stream.
#[derive(Debug)]
pub struct Parser {
    /// Bytes of the current line not yet terminated; never holds CR or LF.
    line: Vec<u8>,
    /// The last line ended with a CR at the very end of a push: an LF at the
    /// start of the next (non-empty) push belongs to that line end.
    after_cr: bool,
    /// The BOM check at the start of the stream is over.
    started: bool,
    /// How many bytes of a BOM have been seen at the start (while `!started`).
    bom_matched: usize,
    /// The event being built.
    fields: Fields,
    /// Longest line, and longest event data, held (bytes).
    limit: usize,
    /// Set when the input passed the limit; nothing is parsed after it.
    overflow: Option<Overflow>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::with_limit(usize::MAX)
    }
}

/// Buffers of the event being built.
#[derive(Debug, Default)]
struct Fields {
    event: String,
    data: String,
    error: Option<String>,
    /// A field line was seen since the last blank line.
    dirty: bool,
}

impl Parser {
    /// A parser at the start of a stream, without a limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser at the start of a stream that holds no line, and no event
    /// data, longer than `limit` bytes (see [`Parser::overflow`]).
    pub fn with_limit(limit: usize) -> Self {
        Parser {
            line: Vec::new(),
            after_cr: false,
            started: false,
            bom_matched: 0,
            fields: Fields::default(),
            limit,
            overflow: None,
        }
    }

    /// Why the parser stopped, when the input passed its limit. The events
    /// completed before that point have been appended to `out` as usual.
    pub fn overflow(&self) -> Option<Overflow> {
        self.overflow
    }

    /// The capacity of the buffers that grow with the input (the partial
    /// line and the event's data): never more than twice the limit. (The
    /// event name and an `error:` field are copies of one line each.)
    pub fn buffered(&self) -> usize {
        self.line.capacity() + self.fields.data.capacity()
    }

    /// Feed the next bytes of the body (split anywhere, even inside a UTF-8 char or between CR and LF); appends every event completed by them to `out`.
    ///
    /// After an [`Overflow`] this does nothing.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        if self.overflow.is_some() {
            return;
        }
        let mut rest = bytes;
        if !self.started {
            rest = self.skip_bom(rest);
            if !self.started {
                return; // everything so far may still be a BOM
            }
            if self.line.len() > self.limit {
                self.overflow = Some(Overflow {
                    event: false,
                    limit: self.limit,
                });
                return;
            }
        }
        if self.after_cr {
            match rest.first() {
                None => return, // keep waiting for the byte after the CR
                Some(&b) => {
                    self.after_cr = false;
                    if b == b'\n' {
                        rest = &rest[1..];
                    }
                }
            }
        }
        let limit = self.limit;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.line.len().saturating_add(pos) > limit {
                self.overflow = Some(Overflow {
                    event: false,
                    limit,
                });
                return;
            }
            let fits = if self.line.is_empty() {
                self.fields.line(&rest[..pos], limit, out)
            } else {
                grow(&mut self.line, pos, limit);
                self.line.extend_from_slice(&rest[..pos]);
                let fits = self.fields.line(&self.line, limit, out);
                self.line.clear();
                if self.line.capacity() > KEEP_CAPACITY {
                    self.line.shrink_to(KEEP_CAPACITY);
                }
                fits
            };
            if !fits {
                self.overflow = Some(Overflow { event: true, limit });
                return;
            }
            let mut next = pos + 1;
            if rest[pos] == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            rest = &rest[next..];
        }
        if self.line.len().saturating_add(rest.len()) > limit {
            self.overflow = Some(Overflow {
                event: false,
                limit,
            });
            return;
        }
        grow(&mut self.line, rest.len(), limit);
        self.line.extend_from_slice(rest);
    }

    /// End of body. Returns true if an unterminated event (fields seen but no blank line yet, or a partial line) was pending and is dropped (browsers drop it). Resets state.
    ///
    /// "Fields seen" means any non-comment line since the last blank line,
    /// including `id:` and `retry:`.
    pub fn finish(&mut self) -> bool {
        let pending = self.fields.dirty || !self.line.is_empty() || self.bom_matched > 0;
        *self = Self::with_limit(self.limit);
        pending
    }

    /// Consumes a (possibly split) leading BOM and returns the bytes after it.
    /// Sets `started` once the BOM question is settled; the bytes of a BOM
    /// prefix that turned out not to be one become the start of the first line.
    fn skip_bom<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        for (i, &b) in bytes.iter().enumerate() {
            if b == BOM[self.bom_matched] {
                self.bom_matched += 1;
                if self.bom_matched == BOM.len() {
                    self.started = true;
                    self.bom_matched = 0;
                    return &bytes[i + 1..];
                }
            } else {
                let kept = &BOM[..self.bom_matched];
                grow(&mut self.line, kept.len(), self.limit);
                self.line.extend_from_slice(kept);
                self.started = true;
                self.bom_matched = 0;
                return &bytes[i..];
            }
        }
        &[]
    }
}

impl Fields {
    /// Interprets one complete line (without its line end). Returns false
    /// when the event's data would pass `limit` (nothing is added then).
    fn line(&mut self, line: &[u8], limit: usize, out: &mut Vec<Event>) -> bool {
        let Some(&first) = line.first() else {
            self.dispatch(out);
            return true;
        };
        if first == b':' {
            return true; // comment
        }
        // ':' is ASCII, so it is never part of a multi-byte sequence: splitting
        // on it before decoding gives what decoding the whole line would.
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        self.dirty = true;
        match name {
            b"data" => {
                // from_utf8 is the fast path; the lossy decoder is for bad input.
                let text = match std::str::from_utf8(value) {
                    Ok(text) => std::borrow::Cow::Borrowed(text),
                    Err(_) => String::from_utf8_lossy(value),
                };
                let need = text.len() + 1;
                if self.data.len().saturating_add(need) > limit {
                    return false;
                }
                if let Some(more) = room(self.data.len(), self.data.capacity(), need, limit) {
                    self.data.reserve_exact(more);
                }
                self.data.push_str(&text);
                self.data.push('\n');
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"error" => self.error = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields
        }
        true
    }

    /// A blank line: emits the event if it has data or an error, then resets.
    fn dispatch(&mut self, out: &mut Vec<Event>) {
        self.dirty = false;
        if self.data.is_empty() && self.error.is_none() {
            self.event.clear();
            return;
        }
        let data = self.data.strip_suffix('\n').unwrap_or(&self.data);
        out.push(Event {
            event: mem::take(&mut self.event),
            // A copy of exactly the right size; the buffer keeps its capacity
            // for the next event (unless one huge event blew it up).
            data: data.to_owned(),
            error: self.error.take(),
        });
        self.data.clear();
        if self.data.capacity() > KEEP_CAPACITY {
            self.data.shrink_to(KEEP_CAPACITY);
        }
    }
}

/// Makes room for `extra` more bytes in `buf` (see [`room`]).
fn grow(buf: &mut Vec<u8>, extra: usize, limit: usize) {
    if let Some(more) = room(buf.len(), buf.capacity(), extra, limit) {
        buf.reserve_exact(more);
    }
}

/// How much to reserve (exactly) for `extra` more bytes in a buffer of
/// `len` and `capacity`: growing as `Vec` would (doubling, so appends stay
/// linear) but never past `limit`, which the caller has checked that
/// `len + extra` fits in. `None`: there is room already.
fn room(len: usize, capacity: usize, extra: usize, limit: usize) -> Option<usize> {
    let need = len + extra;
    if need <= capacity {
        return None;
    }
    let target = need.max(capacity.saturating_mul(2)).min(limit.max(need));
    Some(target - len)
}
