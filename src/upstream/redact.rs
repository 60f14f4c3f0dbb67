//! Keeping the API key out of what upstreams send back.
//!
//! Upstreams sometimes echo the key: in error messages, and (a prompt
//! injection away) in the answer text itself. Two pure tools, used by the
//! chat task on everything an upstream supplies:
//!
//! - [`UpstreamMessage`]: the one constructor of every upstream-supplied
//!   message (status errors, in-stream errors, error bodies). It redacts
//!   the whole raw text first and clips it after, on a character boundary,
//!   so no prefix of the key survives a clip.
//! - [`StreamRedactor`]: redacts the key in streamed answer text across
//!   fragment boundaries, holding back only the longest tail of what it was
//!   given that could still be the start of the key.

pub use crate::error::redact;

pub use crate::error::{
    clip, redact_owned, UpstreamMessage, MAX_MESSAGE_CHARS, REDACTED, SNIPPET_CHARS,
};

/// Redacts `secret` in a text that arrives in fragments.
///
/// Each [`push`](StreamRedactor::push) returns the text that is safe to
/// pass on now: everything given so far, with every complete copy of the
/// key replaced, except the longest tail that is a proper prefix of the
/// key (it could be completed by the next fragment). That tail comes out
/// with the next fragment that shows it is not the key, or at
/// [`finish`](StreamRedactor::finish). The concatenation of the outputs is
/// the whole text redacted as [`redact`] would; text that does not end in a
/// prefix of the key is passed on at once, unchanged.
#[derive(Debug, Clone, Default)]
pub struct StreamRedactor {
    secret: Option<String>,
    held: String,
}

impl StreamRedactor {
    /// A redactor for `secret` (none, or empty: text passes unchanged).
    pub fn new(secret: Option<&str>) -> Self {
        StreamRedactor {
            secret: secret.filter(|s| !s.is_empty()).map(str::to_owned),
            held: String::new(),
        }
    }

    /// The next fragment; returns what may be passed on now (maybe empty).
    /// A fragment that needs nothing done is handed back without a copy.
    pub fn push(&mut self, fragment: impl Into<String>) -> String {
        let fragment = fragment.into();
        let Some(key) = self.secret.as_deref() else {
            return fragment;
        };
        if self.held.is_empty()
            && !fragment.contains(key)
            && longest_key_prefix_suffix(&fragment, key) == 0
        {
            return fragment;
        }
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&fragment);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find(key) {
            out.push_str(&rest[..i]);
            out.push_str(REDACTED);
            rest = &rest[i + key.len()..];
        }
        let hold = longest_key_prefix_suffix(rest, key);
        out.push_str(&rest[..rest.len() - hold]);
        self.held.push_str(&rest[rest.len() - hold..]);
        out
    }

    /// The end of the text: what is still held (not the key: a proper
    /// prefix of it at most).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// How many bytes are held back (always fewer than the key has).
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// `key` (0 when none).
fn longest_key_prefix_suffix(text: &str, key: &str) -> usize {
    let (text, key) = (text.as_bytes(), key.as_bytes());
    let longest = text.len().min(key.len().saturating_sub(1));
    let Some(&first) = key.first() else {
        return 0;
    };
    // Only a tail starting with the key's first byte can match (this runs
    // on every delta): one pass over the last key-length bytes, longest
    // candidate first. Equal bytes are equal text, boundaries included.
    let tail = text.len() - longest;
    (tail..text.len())
        .filter(|&i| text[i] == first)
        .map(|i| text.len() - i)
        .find(|&k| key.starts_with(&text[text.len() - k..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_before_clipping() {
        let key = "sk-test-SECRET1234567890";
        let raw = format!("{}{key} tail", "x".repeat(490));
        let m = UpstreamMessage::new(&raw, Some(key));
        assert!(!m.as_str().contains("sk-test"), "{m}");
        assert_eq!(m.as_str().chars().count(), MAX_MESSAGE_CHARS);
        let q = UpstreamMessage::quoting(
            "invalid JSON in stream",
            &format!("{}{key}", "y".repeat(95)),
            Some(key),
        );
        assert!(!q.as_str().contains("sk-"), "{q}");
        assert!(q.as_str().starts_with("invalid JSON in stream: yyy"), "{q}");
    }

    #[test]
    fn held_tail_is_the_longest_key_prefix() {
        assert_eq!(longest_key_prefix_suffix("abc sk-t", "sk-test"), 4);
        assert_eq!(longest_key_prefix_suffix("abc", "sk-test"), 0);
        assert_eq!(longest_key_prefix_suffix("sk-tes", "sk-test"), 6);
        assert_eq!(longest_key_prefix_suffix("aa", "aab"), 2);
    }
}
