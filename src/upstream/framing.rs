//! The read-side framing guard of a plain-HTTP upstream connection
//! (PROTOCOL.md §4, "HTTP framing is read as RFC 9112 says").
//!
//! awc (actix-http) reads an HTTP/1.1 response with neither
//! `Content-Length` nor chunked coding as having no body, and ends a body
//! whose connection closes early (mid-chunk, between chunks without the last
//! one, or short of its `Content-Length`) as if it were complete.
//! [`ResponseFraming`] sits between the socket and awc, follows the framing
//! of every response on the connection (sequential responses on a kept-alive
//! connection, 1xx interim heads, 204/304 without a body) and fixes both:
//!
//! - a close-delimited HTTP/1.1 body is re-framed as chunked for awc
//!   (`transfer-encoding: chunked` and `connection: close` in its head, each
//!   read one chunk, the last chunk at the close), so it is read to the
//!   close and ends normally; an HTTP/1.0 one awc already reads to the close;
//! - a chunked body without its last chunk, or a sized body with fewer
//!   bytes than declared, ends with an [`io::ErrorKind::UnexpectedEof`]
//!   error instead of a clean end.
//!
//! Pure and synchronous, like the SSE parser: the connection feeds it what
//! it reads ([`ResponseFraming::feed`]) and the close
//! ([`ResponseFraming::end`]), and hands awc what it appends to `out`. It
//! buffers at most one response head ([`MAX_HEAD`]); body bytes pass
//! through. Heads are read with `httparse`, the parser awc itself uses, so
//! both sides agree on them. Only POST requests go upstream, so a response
//! to `HEAD` (which has no body whatever its headers say) never comes.

use std::io;
use std::io::Write as _;

use awc::http::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use awc::http::{StatusCode, Version};

/// Largest response head the guard holds (awc's own limit is larger; a
/// head this big from a chat upstream is an error either way).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a response head (as many as awc accepts).
const MAX_HEADERS: usize = 96;

/// The message of the error a body cut before its end reads as.
pub const CUT_BODY: &str = "upstream closed the connection before the end of the body";

/// The content codings awc decodes (one coding each; a list of several is
/// not decoded).
pub const DECODED_CODINGS: &[&str] = &["identity", "gzip", "deflate", "br", "zstd"];

/// Whether awc reads a response with this head as having no body although
/// it has one: an HTTP/1.1 success (other than 204) with neither
/// `Content-Length` nor chunked coding, whose body runs to the close. On
/// plain-HTTP connections the guard has re-framed such a body as chunked
/// before awc saw the head, so this is only ever true over TLS, where the
/// guard cannot read HTTP.
pub fn awc_reads_no_body(version: Version, status: StatusCode, headers: &HeaderMap) -> bool {
    let chunked = headers
        .get_all(TRANSFER_ENCODING)
        .any(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"));
    version == Version::HTTP_11
        && status.is_success()
        && status != StatusCode::NO_CONTENT
        && !chunked
        && !headers.contains_key(CONTENT_LENGTH)
}

/// Where the guard is on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between responses, or inside a response head.
    Head,
    /// A `Content-Length` body with this many bytes left.
    Length(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// A close-delimited HTTP/1.1 body, re-framed as chunked for awc.
    Reframe,
    /// Bytes awc frames by itself until the close: an HTTP/1.0
    /// close-delimited body, what follows a `101`, or a head awc rejects.
    Passthrough,
    /// The connection has ended (closed, or failed).
    Closed,
}

/// Where a chunked body is (the states of RFC 9112 §7.1, as strict as
/// actix-http's decoder, so both sides agree on every byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    SizeFirst,
    Size(u64),
    SizeWhitespace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line: a trailer field or the final CRLF.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// The framing guard of one connection; see the module docs.
#[derive(Debug)]
pub struct ResponseFraming {
    state: State,
    /// The response head being collected.
    head: Vec<u8>,
    /// A request was written and its final response has not begun.
    awaiting: bool,
    /// Mark every final response head `connection: close` (a plain-HTTP
    /// proxy connection carries one request).
    close_each: bool,
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, CUT_BODY)
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("upstream response: {why}"),
    )
}

impl ResponseFraming {
    /// A guard at the start of a connection. With `close_each`, every final
    /// response head is marked `connection: close` (its own `Connection`,
    /// `Keep-Alive` and `Proxy-Connection` headers removed).
    pub fn new(close_each: bool) -> Self {
        ResponseFraming {
            state: State::Head,
            head: Vec::new(),
            awaiting: false,
            close_each,
        }
    }

    /// A request has been (partly) written: a response is expected. Bytes
    /// that arrive while none is expected are passed on unparsed, so that
    /// awc's check of an idle pooled connection still sees them.
    pub fn request_sent(&mut self) {
        self.awaiting = true;
    }

    /// Bytes held that are not yet part of what was handed on (a partial
    /// response head): never more than [`MAX_HEAD`] after a successful
    /// [`feed`](Self::feed) (a longer head is an error).
    pub fn buffered(&self) -> usize {
        self.head.len()
    }

    /// Takes the next bytes read from the connection; appends what awc must
    /// read to `out`. An error means the response is malformed; the
    /// connection is then unusable.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        while !input.is_empty() {
            match self.state {
                State::Head => {
                    if self.head.is_empty() && !self.awaiting {
                        // Nothing was asked: not ours to parse.
                        out.extend_from_slice(input);
                        return Ok(());
                    }
                    input = match self.take_head(input, out) {
                        Ok(rest) => rest,
                        Err(e) => {
                            self.state = State::Closed;
                            return Err(e);
                        }
                    };
                }
                State::Length(left) => {
                    let take = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Length(left)
                    };
                }
                State::Chunked(chunk) => {
                    let (taken, next) = match step_chunked(chunk, input) {
                        Ok(r) => r,
                        Err(e) => {
                            self.state = State::Closed;
                            return Err(e);
                        }
                    };
                    out.extend_from_slice(&input[..taken]);
                    input = &input[taken..];
                    self.state = match next {
                        Some(c) => State::Chunked(c),
                        None => State::Head,
                    };
                }
                State::Reframe => {
                    // (Writing to a Vec cannot fail.)
                    let _ = write!(out, "{:x}\r\n", input.len());
                    out.extend_from_slice(input);
                    out.extend_from_slice(b"\r\n");
                    return Ok(());
                }
                State::Passthrough => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Closed => return Ok(()),
            }
        }
        Ok(())
    }

    /// The connection was closed by the upstream. A close-delimited body
    /// ends here (its last chunk goes to `out`); a body cut before its end
    /// is an [`io::ErrorKind::UnexpectedEof`] error.
    pub fn end(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::Head if !self.head.is_empty() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed the connection inside a response head",
            )),
            State::Length(_) | State::Chunked(_) => Err(cut()),
            State::Reframe => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
            State::Head | State::Passthrough | State::Closed => Ok(()),
        }
    }

    /// Collects head bytes from `input`; on a complete head, decides the
    /// body's framing and hands the (maybe rewritten) head on. Returns the
    /// bytes of `input` after the head.
    fn take_head<'i>(&mut self, input: &'i [u8], out: &mut Vec<u8>) -> io::Result<&'i [u8]> {
        let from = self.head.len().saturating_sub(2);
        let held = self.head.len();
        self.head.extend_from_slice(input);
        let Some(end) = head_end(&self.head, from) else {
            if self.head.len() > MAX_HEAD {
                return Err(invalid(&format!("response head over {MAX_HEAD} bytes")));
            }
            return Ok(&[]);
        };
        self.head.truncate(end);
        // The end lies in `input` (a head end in the held bytes would have
        // been found by the previous call), so this takes at least one byte.
        let rest = input.get(end.saturating_sub(held)..).unwrap_or_default();
        let head = std::mem::take(&mut self.head);
        self.on_head(&head, out)?;
        Ok(rest)
    }

    fn on_head(&mut self, head: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        match config.parse_response(&mut response, head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(invalid("incomplete response head")),
            Err(e) => return Err(invalid(&format!("malformed response head ({e})"))),
        }
        let code = response.code.unwrap_or(0);
        let http11 = response.version == Some(1);
        if (100..200).contains(&code) {
            out.extend_from_slice(head);
            if code == 101 {
                self.state = State::Passthrough;
            }
            return Ok(());
        }
        self.awaiting = false;
        let mut chunked = false;
        let mut other_coding = false;
        let mut length: Option<u64> = None;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") && http11 {
                // awc accepts exactly `chunked` or `identity`.
                let value = String::from_utf8_lossy(h.value);
                match value.trim() {
                    v if v.eq_ignore_ascii_case("chunked") => chunked = true,
                    v if v.eq_ignore_ascii_case("identity") => {}
                    _ => other_coding = true,
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .map(str::trim)
                    .filter(|v| !v.starts_with('+'))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| invalid("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(invalid("conflicting Content-Length values"));
                }
                length = Some(n);
            }
        }
        let no_body = code == 204 || code == 304;
        let (state, reframe) = if other_coding {
            // awc refuses the head itself; pass it on so that it says so.
            (State::Passthrough, false)
        } else if no_body {
            (State::Head, false)
        } else if chunked {
            (State::Chunked(Chunk::SizeFirst), false)
        } else if let Some(n) = length {
            (
                if n == 0 {
                    State::Head
                } else {
                    State::Length(n)
                },
                false,
            )
        } else if http11 {
            (State::Reframe, true)
        } else {
            (State::Passthrough, false)
        };
        self.state = state;
        if reframe || self.close_each {
            rewrite_head(head, reframe, out);
        } else {
            out.extend_from_slice(head);
        }
        Ok(())
    }
}

/// The end (index after the blank line) of a head in `buf`, searching from
/// `from`: a line end (LF or CRLF) followed by an empty line.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + p;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// Writes `head` with `connection: close` instead of its own connection
/// headers; when `reframe`, also declares `transfer-encoding: chunked`
/// (dropping a `transfer-encoding: identity`).
fn rewrite_head(head: &[u8], reframe: bool, out: &mut Vec<u8>) {
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    if let Some(status) = lines.next() {
        out.extend_from_slice(status);
    }
    for line in lines {
        let name = line.iter().position(|&b| b == b':').map(|c| {
            String::from_utf8_lossy(&line[..c])
                .trim()
                .to_ascii_lowercase()
        });
        match name.as_deref() {
            None => {} // the blank line ending the head
            Some("connection" | "keep-alive" | "proxy-connection") => {}
            Some("transfer-encoding") if reframe => {}
            Some(_) => out.extend_from_slice(line),
        }
    }
    if reframe {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
}

/// Advances a chunked body over `input`: how many bytes belong to the body
/// and the next state (`None`: the body ended after those bytes).
fn step_chunked(mut state: Chunk, input: &[u8]) -> io::Result<(usize, Option<Chunk>)> {
    let mut i = 0;
    while i < input.len() {
        if let Chunk::Data(left) = state {
            let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
            i += take;
            let left = left - take as u64;
            state = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data(left)
            };
            continue;
        }
        i += 1;
        match step_byte(state, input[i - 1])? {
            Some(next) => state = next,
            None => return Ok((i, None)),
        }
    }
    Ok((i, Some(state)))
}

/// One byte of a chunked body outside chunk data; `None`: the body ended.
fn step_byte(state: Chunk, b: u8) -> io::Result<Option<Chunk>> {
    let bad = |why: &str| invalid(&format!("malformed chunked body ({why})"));
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    Ok(Some(match state {
        Chunk::SizeFirst => Chunk::Size(hex(b).ok_or_else(|| bad("chunk size"))?),
        Chunk::Size(n) => match b {
            b'\t' | b' ' => Chunk::SizeWhitespace(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => {
                let d = hex(b).ok_or_else(|| bad("chunk size"))?;
                Chunk::Size(
                    n.checked_mul(16)
                        .and_then(|n| n.checked_add(d))
                        .ok_or_else(|| bad("chunk size too big"))?,
                )
            }
        },
        Chunk::SizeWhitespace(n) => match b {
            b'\t' | b' ' => Chunk::SizeWhitespace(n),
            b';' => Chunk::Extension(n),
            b'\r' => Chunk::SizeLf(n),
            _ => return Err(bad("chunk size")),
        },
        Chunk::Extension(n) => match b {
            b'\r' => Chunk::SizeLf(n),
            0x00..=0x08 | 0x0a..=0x1f | 0x7f => return Err(bad("chunk extension")),
            _ => Chunk::Extension(n),
        },
        Chunk::SizeLf(n) => match (b, n) {
            (b'\n', 0) => Chunk::EndCr,
            (b'\n', n) => Chunk::Data(n),
            _ => return Err(bad("chunk size line end")),
        },
        // Chunk data is taken in bulk by `step_chunked`, never byte by byte.
        Chunk::Data(_) => return Err(bad("chunk data")),
        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
        Chunk::DataLf if b == b'\n' => Chunk::SizeFirst,
        Chunk::DataCr | Chunk::DataLf => return Err(bad("chunk data end")),
        Chunk::EndCr if b == b'\r' => Chunk::EndLf,
        Chunk::EndCr | Chunk::Trailer if b != b'\r' => Chunk::Trailer,
        Chunk::EndCr | Chunk::Trailer => Chunk::TrailerLf,
        Chunk::TrailerLf if b == b'\n' => Chunk::EndCr,
        Chunk::EndLf if b == b'\n' => return Ok(None),
        Chunk::TrailerLf | Chunk::EndLf => return Err(bad("trailer")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` after a request, then the close; returns what awc
    /// would read, or the error.
    fn run(pieces: &[&[u8]]) -> io::Result<Vec<u8>> {
        let mut g = ResponseFraming::new(false);
        g.request_sent();
        let mut out = Vec::new();
        for p in pieces {
            g.feed(p, &mut out)?;
        }
        g.end(&mut out)?;
        Ok(out)
    }

    /// `run` with `input` split at every point and byte by byte: all agree.
    fn run_split(input: &[u8]) -> io::Result<Vec<u8>> {
        let whole = run(&[input]);
        for k in 0..=input.len() {
            let split = run(&[&input[..k], &input[k..]]);
            match (&whole, &split) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "split at {k}"),
                (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "split at {k}"),
                _ => panic!("split at {k}: {whole:?} vs {split:?}"),
            }
        }
        whole
    }

    #[test]
    fn a_close_delimited_body_is_reframed_as_chunked() {
        let out = run(&[b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: keep-alive\r\n\r\nab", b"cde"]).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
        );
    }

    #[test]
    fn sized_and_chunked_bodies_pass_through_and_must_be_complete() {
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(run_split(sized).unwrap(), sized);
        let err = run_split(&sized[..sized.len() - 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), CUT_BODY);

        let chunked: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n1 \r\n!\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(run_split(chunked).unwrap(), chunked);
        for k in 45..chunked.len() {
            let err = run(&[&chunked[..k]]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {k}");
        }
    }

    #[test]
    fn interim_heads_no_body_statuses_and_keep_alive_sequences() {
        let input: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(run_split(input).unwrap(), input);

        // Two responses on one kept-alive connection; the close between
        // them is clean.
        let first: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let second: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let mut g = ResponseFraming::new(false);
        let mut out = Vec::new();
        for response in [first, second] {
            g.request_sent();
            g.feed(response, &mut out).unwrap();
        }
        g.end(&mut out).unwrap();
        assert_eq!(out, [first, second].concat());
    }

    #[test]
    fn http10_close_delimited_bodies_are_left_to_awc() {
        let input: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n";
        assert_eq!(run_split(input).unwrap(), input);
    }

    #[test]
    fn unsolicited_bytes_pass_unparsed() {
        let mut g = ResponseFraming::new(false);
        let mut out = Vec::new();
        g.feed(b"junk", &mut out).unwrap();
        assert_eq!(out, b"junk");
    }

    #[test]
    fn malformed_heads_and_chunks_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let err = run(&[bad]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        }
        let mut g = ResponseFraming::new(false);
        g.request_sent();
        let big = vec![b'a'; MAX_HEAD + 1];
        assert!(g.feed(&big, &mut Vec::new()).is_err());
    }

    #[test]
    fn close_each_marks_final_heads_connection_close() {
        let mut g = ResponseFraming::new(true);
        g.request_sent();
        let mut out = Vec::new();
        g.feed(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\
              Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
            &mut out,
        )
        .unwrap();
        g.end(&mut out).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\
             connection: close\r\n\r\nok"
        );
    }
}
