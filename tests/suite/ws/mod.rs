//! The `/ws` front end: the real gateway in-process on `127.0.0.1:0`, the
//! scripted fake upstream and a real WebSocket client (`support/`). The
//! upstream engine's behaviour (retries, the commit point, timeouts, ...)
//! is tested here too, because the `/ws` frames show every step of it
//! (`start`, `retry`, `delta`, the terminal frame); `openai_api.rs` checks
//! how `/v1` maps the same outcomes. Section numbers (§) refer to
//! /work/shared/PROTOCOL.md.

// What the browser sees of a chat, and what the upstream is sent.
mod content;
mod stream_text;
mod upstream_request;

// How an attempt fails, and what is retried.
mod commit_point;
mod fallback;
mod rejections;
mod retries;
mod stream_ends;
mod timeouts;

// The socket and its chats.
mod bad_input;
mod cancel_and_disconnects;
mod concurrent_chats;

// Hardening: who may connect, how much, and what never leaks or spreads.
mod backpressure;
mod connection_limits;
mod key_redaction;
mod origins_and_tokens;
mod panics;

// The end of the gateway's life.
mod shutdown;
