//! `decode_event` never panics, whatever the event's fields hold, and its
//! error messages stay short.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use netfly::upstream::completion::{
    decode_event, decode_whole_body, error_message_from_body, Decoded,
};
use netfly::upstream::sse::Event;

#[derive(Arbitrary, Debug)]
struct Input {
    event: String,
    data: String,
    error: Option<String>,
}

fuzz_target!(|input: Input| {
    let whole = input.data.clone();
    let ev = Event {
        event: input.event,
        data: input.data,
        error: input.error,
    };
    match decode_event(&ev) {
        Ok(Decoded::Chunk {
            content: Some(c), ..
        }) => assert!(!c.is_empty(), "content is never an empty string"),
        Ok(_) => {}
        Err(e) => {
            let shown = e.message(None);
            assert!(
                shown.as_str().chars().count() <= 500,
                "error message too long: {}",
                shown.as_str().chars().count()
            )
        }
    }
    // The non-streamed paths read the same bytes.
    let _ = decode_whole_body(whole.as_bytes());
    let _ = error_message_from_body(whole.as_bytes());
});
