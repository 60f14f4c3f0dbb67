//! The WebSocket frame guard (`src/ws_guard.rs`) fed any bytes, split
//! anywhere: it never panics, lets the bytes through unchanged up to its
//! verdict and nothing after, and reaches the verdict — at the same byte —
//! that its whole-input specification computes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfly::ws_guard::{verdict_of_whole, FrameGuard};

#[derive(Arbitrary, Debug)]
struct Input {
    /// The frame/message limit (small ones reach the size rules often).
    max: u16,
    /// Split points (taken modulo the input length, sorted).
    cuts: Vec<u16>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let bytes = &input.bytes[..];
    let max = usize::from(input.max);
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(bytes.len());

    let mut guard = FrameGuard::new(max);
    let mut passed = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for cut in cuts {
        let chunk = &bytes[from..cut];
        let n = guard.feed(chunk);
        assert!(n <= chunk.len());
        if n < chunk.len() {
            assert!(guard.verdict().is_some(), "bytes held back without a verdict");
        }
        passed.extend_from_slice(&chunk[..n]);
        from = cut;
    }

    let expected = verdict_of_whole(bytes, max);
    assert_eq!(guard.verdict(), expected.map(|(_, v)| v));
    let until = expected.map_or(bytes.len(), |(at, _)| at);
    assert_eq!(passed, &bytes[..until]);
});
