//! The SSE parser never panics, and the events it yields do not depend on
//! how the body is split into pushes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfly::upstream::sse::{Event, Parser};

#[derive(Arbitrary, Debug)]
struct Input {
    body: Vec<u8>,
    /// Split points (taken modulo the body length, sorted).
    cuts: Vec<u16>,
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
});
