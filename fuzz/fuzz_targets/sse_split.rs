//! The SSE parser never panics, the events it yields do not depend on how
//! the body is split into pushes, and a bounded parser (a small random
//! limit) stops at the same point however split, with its buffers never
//! past one line and one event of the limit.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfly::upstream::sse::{Event, Overflow, Parser};

#[derive(Arbitrary, Debug)]
struct Input {
    body: Vec<u8>,
    /// Split points (taken modulo the body length, sorted).
    cuts: Vec<u16>,
    /// The bound of the limited parser: 1 + limit % 512 bytes.
    limit: u16,
}

fn parse(pieces: &[&[u8]]) -> (Vec<Event>, bool) {
    let mut parser = Parser::new();
    let mut out = Vec::new();
    for p in pieces {
        parser.push(p, &mut out);
    }
    let pending = parser.finish();
    (out, pending)
}

fn parse_limited(limit: usize, pieces: &[&[u8]]) -> (Vec<Event>, Option<Overflow>) {
    let mut parser = Parser::with_limit(limit);
    let mut out = Vec::new();
    for p in pieces {
        parser.push(p, &mut out);
        assert!(
            parser.buffered() <= 2 * limit,
            "buffers {} past 2 × {limit}",
            parser.buffered()
        );
    }
    (out, parser.overflow())
}

fuzz_target!(|input: Input| {
    let body = &input.body[..];
    let whole = parse(&[body]);
    let mut cuts: Vec<usize> = if body.is_empty() {
        Vec::new()
    } else {
        input
            .cuts
            .iter()
            .map(|&c| usize::from(c) % (body.len() + 1))
            .collect()
    };
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for c in cuts {
        pieces.push(&body[from..c]); // empty pieces on purpose
        from = c;
    }
    pieces.push(&body[from..]);
    let split = parse(&pieces);
    assert_eq!(
        whole,
        split,
        "split at {:?}",
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    // Byte by byte, the worst split of all.
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(whole, parse(&bytes));

    // The bounded reader: the same answer however split; without an
    // overflow, the events of the unbounded parser; with one, a prefix.
    let limit = 1 + usize::from(input.limit) % 512;
    let limited = parse_limited(limit, &[body]);
    assert_eq!(limited, parse_limited(limit, &pieces));
    assert_eq!(limited, parse_limited(limit, &bytes));
    match limited.1 {
        None => assert_eq!(limited.0, whole.0),
        Some(_) => assert!(whole.0.starts_with(&limited.0)),
    }
});
