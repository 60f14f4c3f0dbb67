//! `parse_client_frame` never panics, and every frame it accepts satisfies
//! PROTOCOL.md §3: id 1–64 printable ASCII, model in the list, 1–256
//! messages, params in range, image URLs within their limit, resume frames
//! with a session of 1–64 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netfly::protocol::{parse_client_frame, ClientFrame, Content, ContentPart, FrameRules, Stop};

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn in_range(v: Option<f64>, lo: f64, hi: f64) -> bool {
    v.is_none_or(|x| (lo..=hi).contains(&x))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let models = vec!["gpt-3.5-turbo".to_owned(), "gpt-4".to_owned()];
    let rules = FrameRules {
        models: &models,
        max_image_bytes: 64,
    };
    match parse_client_frame(text, &rules) {
        Ok(ClientFrame::Cancel { id }) => assert!(valid_id(&id), "{id:?}"),
        Ok(ClientFrame::Resume { session, id, .. }) => {
            assert!(valid_id(&id), "{id:?}");
            assert!((1..=64).contains(&session.len()), "{session:?}");
        }
        Ok(ClientFrame::Chat(req)) => {
            assert!(valid_id(&req.id), "{:?}", req.id);
            assert!(models.contains(&req.model), "{:?}", req.model);
            assert!((1..=256).contains(&req.messages.len()));
            for m in &req.messages {
                if let Content::Parts(parts) = &m.content {
                    assert!(!parts.is_empty());
                    for p in parts {
                        if let ContentPart::ImageUrl { image_url } = p {
                            assert!(image_url.url.len() <= 64, "{:?}", image_url.url);
                        }
                    }
                }
            }
            let p = &req.params;
            assert!(in_range(p.temperature, 0.0, 2.0));
            assert!(in_range(p.top_p, 0.0, 1.0));
            assert!(in_range(p.presence_penalty, -2.0, 2.0));
            assert!(in_range(p.frequency_penalty, -2.0, 2.0));
            assert_ne!(p.max_tokens, Some(0));
            if let Some(Stop::Many(list)) = &p.stop {
                assert!(list.len() <= 4);
            }
        }
        Err(e) => {
            if let Some(id) = &e.id {
                assert!(valid_id(id), "an error is only tied to a valid id");
            }
        }
    }
});
