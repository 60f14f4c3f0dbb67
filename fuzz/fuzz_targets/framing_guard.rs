//! The read-side framing guard (`netfly::upstream::framing`) never panics,
//! holds at most one response head, and never passes off a cut body as a
//! complete one: a response of random framing (Content-Length, chunked with
//! random chunk sizes, or close-delimited) and random body, cut anywhere
//! and fed at random splits, is read back from the guard's output; the
//! body delivered is a prefix of the real one, and it is the whole body
//! whenever the guard reported a clean end. Raw random bytes too.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfly::upstream::framing::{ResponseFraming, MAX_HEAD};

#[derive(Arbitrary, Debug)]
enum Framing {
    Length,
    Chunked(Vec<u8>),
    CloseDelimited,
}

#[derive(Arbitrary, Debug)]
struct Input {
    framing: Framing,
    http10: bool,
    interim: bool,
    body: Vec<u8>,
    /// Where the connection ends (modulo the response length + 1).
    cut: u16,
    cuts: Vec<u16>,
    /// Bytes fed as they are instead of a built response.
    raw: Option<Vec<u8>>,
}

/// The response bytes and whether its framing is delimited by the close.
fn build(input: &Input) -> (Vec<u8>, bool) {
    let version = if input.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut out = Vec::new();
    if input.interim {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend_from_slice(
        format!("{version} 200 OK\r\ncontent-type: text/event-stream\r\n").as_bytes(),
    );
    let body = &input.body;
    match &input.framing {
        Framing::Length => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
            (out, false)
        }
        Framing::Chunked(sizes) if !input.http10 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let mut rest = &body[..];
            let mut sizes = sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (usize::from(*sizes.next().unwrap_or(&7)) + 1).min(rest.len());
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
            (out, false)
        }
        _ => {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(body);
            (out, true)
        }
    }
}

/// Reads the guard's output as awc would: heads (skipping 1xx), then the
/// body by its framing. Returns the body and whether it was complete.
fn read_back(out: &[u8]) -> (Vec<u8>, bool) {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&out[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return (Vec::new(), false),
        };
        let code = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        let mut length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok());
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") && h.value == b"chunked" {
                chunked = true;
            }
        }
        at += n;
        if (100..200).contains(&code) {
            continue;
        }
        let rest = &out[at..];
        if chunked {
            let mut body = Vec::new();
            let mut r = rest;
            loop {
                let Some(line) = r.windows(2).position(|w| w == b"\r\n") else {
                    return (body, false);
                };
                let Some(size) = std::str::from_utf8(&r[..line])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                else {
                    return (body, false);
                };
                r = &r[line + 2..];
                if size == 0 {
                    return (body, r.starts_with(b"\r\n"));
                }
                body.extend_from_slice(&r[..size.min(r.len())]);
                if r.len() < size + 2 {
                    return (body, false);
                }
                r = &r[size + 2..];
            }
        }
        return match length {
            Some(n) => (rest[..n.min(rest.len())].to_vec(), rest.len() >= n),
            // HTTP/1.0 read to the close (complete by definition).
            None if http10 => (rest.to_vec(), true),
            None => (Vec::new(), true),
        };
    }
}

fuzz_target!(|input: Input| {
    let (response, close_delimited) = match &input.raw {
        Some(raw) => (raw.clone(), false),
        None => build(&input),
    };
    let end = usize::from(input.cut) % (response.len() + 1);
    let sent = &response[..end];
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (sent.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut guard = ResponseFraming::new(false);
    guard.request_sent();
    let mut out = Vec::new();
    let mut from = 0;
    let mut failed = false;
    for c in cuts.into_iter().chain([sent.len()]) {
        if guard.feed(&sent[from..c], &mut out).is_err() {
            failed = true;
            break;
        }
        assert!(
            guard.buffered() <= MAX_HEAD,
            "head buffer {}",
            guard.buffered()
        );
        from = c;
    }
    let clean = !failed && guard.end(&mut out).is_ok();
    if input.raw.is_some() {
        return;
    }
    let (delivered, complete) = read_back(&out);
    let real = &input.body;
    assert!(
        real.starts_with(&delivered),
        "delivered body is not a prefix of the real one"
    );
    if clean && end == response.len() {
        assert!(
            complete && delivered == *real,
            "a whole response read back short"
        );
    }
    if clean && !close_delimited && !delivered.is_empty() {
        // A clean end with a framed body: it was all there.
        assert!(
            complete && delivered == *real,
            "a cut body passed for complete"
        );
    }
});
