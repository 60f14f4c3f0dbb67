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

/// Incremental parser state for one event stream.
#[derive(Debug, Default)]
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
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed the next bytes of the body (split anywhere, even inside a UTF-8 char or between CR and LF); appends every event completed by them to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Event>) {
        let mut rest = bytes;
        if !self.started {
            rest = self.skip_bom(rest);
            if !self.started {
                return; // everything so far may still be a BOM
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
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.line.is_empty() {
                self.fields.line(&rest[..pos], out);
            } else {
                self.line.extend_from_slice(&rest[..pos]);
                self.fields.line(&self.line, out);
                self.line.clear();
                if self.line.capacity() > KEEP_CAPACITY {
                    self.line.shrink_to(KEEP_CAPACITY);
                }
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
        self.line.extend_from_slice(rest);
    }

    /// End of body. Returns true if an unterminated event (fields seen but no blank line yet, or a partial line) was pending and is dropped (browsers drop it). Resets state.
    ///
    /// "Fields seen" means any non-comment line since the last blank line,
    /// including `id:` and `retry:`.
    pub fn finish(&mut self) -> bool {
        let pending = self.fields.dirty || !self.line.is_empty() || self.bom_matched > 0;
        *self = Self::default();
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
                self.line.extend_from_slice(&BOM[..self.bom_matched]);
                self.started = true;
                self.bom_matched = 0;
                return &bytes[i..];
            }
        }
        &[]
    }
}

impl Fields {
    /// Interprets one complete line (without its line end).
    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        let Some(&first) = line.first() else {
            self.dispatch(out);
            return;
        };
        if first == b':' {
            return; // comment
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
                match std::str::from_utf8(value) {
                    Ok(text) => self.data.push_str(text),
                    Err(_) => self.data.push_str(&String::from_utf8_lossy(value)),
                }
                self.data.push('\n');
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"error" => self.error = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry and unknown fields
        }
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
