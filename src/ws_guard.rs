//! The frame-size guard in front of actix-http's WebSocket parser.
//!
//! actix-http compares a frame's declared length with its `max_size` only
//! once the whole frame has arrived, so a client declaring a 2^40-byte
//! frame makes the gateway buffer whatever it sends. We own the seam before
//! that parser — the request payload handed to the session — and guard it
//! here: [`FrameGuard`] is a small, pure, incremental parser of client frame
//! headers (RFC 6455 §5.2) that lets every byte through untouched and skips
//! payloads without looking at them. As soon as a header declares a frame
//! over the limit, or a fragmented message's running total passes it, or a
//! header breaks the framing rules (unmasked, reserved bits or opcodes, a
//! control frame over 125 bytes or fragmented, a continuation with nothing
//! to continue, a new message inside a fragmented one), it gives a
//! [`Verdict`] and passes nothing from that byte on.
//!
//! [`guard`] wraps the payload stream: on a verdict it ends the stream after
//! the bytes before it (so every earlier frame is still read), and the
//! session, told the stream ended, closes with the verdict's code (1009 for
//! size, 1002 for framing) at once. Memory stays bounded by the limit.

use std::cell::Cell;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_http::error::PayloadError;
use actix_http::ws::{CloseCode, ProtocolError};
use bytes::Bytes;
use futures_util::Stream;

/// Why the guard stopped a client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A frame declared more than the limit (`fragmented: false`), or a
    /// fragmented message's frames together did (`fragmented: true`);
    /// `len` is the declared length or the running total. Closes with 1009.
    TooBig {
        len: u64,
        max: u64,
        fragmented: bool,
    },
    /// A header broke the framing rules. Closes with 1002.
    Protocol(&'static str),
}

impl Verdict {
    /// The close code the socket gets.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Verdict::TooBig { .. } => CloseCode::Size,
            Verdict::Protocol(_) => CloseCode::Protocol,
        }
    }
}

/// The close reason (short: a close frame carries at most 123 bytes).
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::TooBig {
                max,
                fragmented: false,
                ..
            } => write!(f, "frame larger than {max} bytes"),
            Verdict::TooBig {
                max,
                fragmented: true,
                ..
            } => write!(f, "message larger than {max} bytes"),
            Verdict::Protocol(why) => f.write_str(why),
        }
    }
}

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const MASK: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// The longest header: 2 bytes, a 64-bit length, the mask key.
const MAX_HEADER: usize = 14;

/// What the first header byte says (or the framing rule it breaks).
fn check_first(b0: u8, in_message: bool) -> Result<(), &'static str> {
    if b0 & RSV != 0 {
        return Err("reserved bits set without an extension");
    }
    let fin = b0 & FIN != 0;
    match b0 & 0x0f {
        CONTINUATION if !in_message => Err("continuation frame without a message to continue"),
        TEXT | BINARY if in_message => Err("new message before the fragmented one ended"),
        CLOSE | PING | PONG if !fin => Err("fragmented control frame"),
        CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG => Ok(()),
        _ => Err("reserved opcode"),
    }
}

fn is_control(b0: u8) -> bool {
    b0 & 0x08 != 0
}

/// The header length once the second byte is known (mask key included).
fn header_len(b1: u8) -> usize {
    match b1 & 0x7f {
        126 => 2 + 2 + 4,
        127 => 2 + 8 + 4,
        _ => 2 + 4,
    }
}

/// Bytes of the header that carry the length (the second byte, or the
/// 16- or 64-bit extension): the length is known once these are read.
fn length_end(b1: u8) -> usize {
    match b1 & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// The payload length in a header whose first `length_end` bytes are read.
fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    }
}

/// The size rule, given the payload length of a frame whose first byte is
/// `b0`, the running total of the open message (if any) and the limit.
/// Returns the frame's new running total (data frames) on success.
fn check_len(b0: u8, len: u64, open: Option<u64>, max: u64) -> Result<u64, Verdict> {
    if is_control(b0) {
        // Control frames never count toward a message (≤ 125 checked earlier).
        return Ok(open.unwrap_or(0));
    }
    if len > max {
        return Err(Verdict::TooBig {
            len,
            max,
            fragmented: false,
        });
    }
    let total = open.unwrap_or(0) + len;
    if total > max {
        return Err(Verdict::TooBig {
            len: total,
            max,
            fragmented: true,
        });
    }
    Ok(total)
}

/// The message state after a data or control frame's header: a data frame
/// without FIN opens (or keeps open) a message; one with FIN closes it.
fn message_after(b0: u8, open: Option<u64>, total: u64) -> Option<u64> {
    if is_control(b0) {
        open
    } else if b0 & FIN != 0 {
        None
    } else {
        Some(total)
    }
}

/// Where the guard is in the client's byte stream.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Reading a header: `have` of its bytes are in `head`.
    Header { have: usize },
    /// Skipping a payload: this many bytes of it are still to come.
    Payload(u64),
}

/// The incremental frame-header parser (see the module documentation).
#[derive(Debug, Clone)]
pub struct FrameGuard {
    max: u64,
    head: [u8; MAX_HEADER],
    phase: Phase,
    /// The running total of the fragmented message in progress, if any.
    open: Option<u64>,
    /// The current frame's running total, known once its length is.
    total: u64,
    verdict: Option<Verdict>,
}

impl FrameGuard {
    /// A guard for frames and messages of at most `max` payload bytes.
    pub fn new(max: usize) -> FrameGuard {
        FrameGuard {
            max: max as u64,
            head: [0; MAX_HEADER],
            phase: Phase::Header { have: 0 },
            open: None,
            total: 0,
            verdict: None,
        }
    }

    /// The verdict, once one was reached.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Reads the next `chunk` of the client's bytes and returns how many of
    /// them may pass: all of them, or — when this chunk brought a verdict —
    /// those before the byte that decided it (none once a verdict exists).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        if self.verdict.is_some() {
            return 0;
        }
        let mut i = 0;
        while i < chunk.len() {
            match self.phase {
                Phase::Payload(left) => {
                    let take = left.min((chunk.len() - i) as u64);
                    // `take` ≤ chunk.len(), so it fits a usize.
                    i += take as usize;
                    self.phase = if take == left {
                        Phase::Header { have: 0 }
                    } else {
                        Phase::Payload(left - take)
                    };
                }
                Phase::Header { have } => {
                    self.head[have] = chunk[i];
                    match self.header_byte(have + 1) {
                        Ok(phase) => self.phase = phase,
                        Err(v) => {
                            self.verdict = Some(v);
                            return i;
                        }
                    }
                    i += 1;
                }
            }
        }
        chunk.len()
    }

    /// Checks the header after its `have`-th byte arrived; returns the
    /// phase that follows.
    fn header_byte(&mut self, have: usize) -> Result<Phase, Verdict> {
        let b0 = self.head[0];
        if have == 1 {
            check_first(b0, self.open.is_some()).map_err(Verdict::Protocol)?;
            return Ok(Phase::Header { have });
        }
        let b1 = self.head[1];
        if have == 2 {
            if b1 & MASK == 0 {
                return Err(Verdict::Protocol("client frame not masked"));
            }
            if is_control(b0) && b1 & 0x7f > 125 {
                return Err(Verdict::Protocol("control frame longer than 125 bytes"));
            }
        }
        if have == length_end(b1) {
            let len = payload_len(&self.head[..have]);
            self.total = check_len(b0, len, self.open, self.max)?;
        }
        if have < header_len(b1) {
            return Ok(Phase::Header { have });
        }
        // The whole header: the frame's payload follows.
        let len = payload_len(&self.head[..have]);
        self.open = message_after(b0, self.open, self.total);
        Ok(if len == 0 {
            Phase::Header { have: 0 }
        } else {
            Phase::Payload(len)
        })
    }
}

/// The specification [`FrameGuard`] is checked against (by the test suite
/// and the fuzz target): the verdict on a whole input, and the offset of
/// the byte that decided it, computed frame by frame with no state carried
/// between calls. `None`: the input breaks no rule (as far as it goes).
pub fn verdict_of_whole(input: &[u8], max: usize) -> Option<(usize, Verdict)> {
    let max = max as u64;
    let mut at = 0usize;
    let mut open: Option<u64> = None;
    loop {
        let &b0 = input.get(at)?;
        if let Err(why) = check_first(b0, open.is_some()) {
            return Some((at, Verdict::Protocol(why)));
        }
        let &b1 = input.get(at + 1)?;
        if b1 & MASK == 0 {
            return Some((at + 1, Verdict::Protocol("client frame not masked")));
        }
        if is_control(b0) && b1 & 0x7f > 125 {
            return Some((
                at + 1,
                Verdict::Protocol("control frame longer than 125 bytes"),
            ));
        }
        let len_end = length_end(b1);
        let head = input.get(at..at + len_end)?;
        let len = payload_len(head);
        let total = match check_len(b0, len, open, max) {
            Ok(t) => t,
            Err(v) => return Some((at + len_end - 1, v)),
        };
        let header = header_len(b1);
        input.get(at + header - 1)?;
        open = message_after(b0, open, total);
        // A payload longer than what is left: the input ends inside it.
        let rest = (input.len() - at - header) as u64;
        if len > rest {
            return None;
        }
        at += header + len as usize;
    }
}

/// Shared between the guarded stream and the session: the guard's verdict,
/// once there is one.
#[derive(Debug, Clone, Default)]
pub struct VerdictSlot(Rc<Cell<Option<Verdict>>>);

impl VerdictSlot {
    /// The verdict that ended the client's byte stream, if one did.
    pub fn get(&self) -> Option<Verdict> {
        self.0.get()
    }
}

/// The payload stream with the guard in front (see [`guard`]).
pub struct Guarded<S> {
    inner: Option<S>,
    guard: FrameGuard,
    slot: VerdictSlot,
}

/// Puts a [`FrameGuard`] for `max` bytes in front of `payload`. The stream
/// passes every chunk untouched until a verdict, then the bytes before it,
/// then ends (dropping `payload`); the verdict is in the returned slot.
pub fn guard<S>(payload: S, max: usize) -> (Guarded<S>, VerdictSlot) {
    let slot = VerdictSlot::default();
    let guarded = Guarded {
        inner: Some(payload),
        guard: FrameGuard::new(max),
        slot: slot.clone(),
    };
    (guarded, slot)
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(mut chunk))) => {
                let pass = this.guard.feed(&chunk);
                if let Some(verdict) = this.guard.verdict() {
                    this.slot.0.set(Some(verdict));
                    // Nothing more is read from the client.
                    this.inner = None;
                    chunk.truncate(pass);
                    if chunk.is_empty() {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            other => other,
        }
    }
}

/// The close code and reason for an error of actix's WebSocket decoder.
///
/// actix-web-actors turns a text frame that is not UTF-8 into an I/O error
/// of kind `Other` carrying `str::Utf8Error`'s message (which says
/// "utf-8"); RFC 6455 §8.1 wants 1007 for it, not 1002. The test suite pins
/// this (`doors::http_details`), so a change in the dependency shows.
pub fn close_for_decoder_error(err: &ProtocolError, max: usize) -> (CloseCode, String) {
    match err {
        ProtocolError::Overflow => (CloseCode::Size, format!("frame larger than {max} bytes")),
        ProtocolError::Io(e)
            if e.kind() == std::io::ErrorKind::Other
                && e.to_string().to_ascii_lowercase().contains("utf-8") =>
        {
            (CloseCode::Invalid, "text frame is not valid UTF-8".into())
        }
        _ => (CloseCode::Protocol, "protocol error".into()),
    }
}
