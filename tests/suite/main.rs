//! The whole test suite in one binary (each test binary is a slow link on
//! two cores):
//!
//! * `support/`: the harness, the one place for the fake upstream, the
//!   clients and the process helpers;
//! * `ws/`: the `/ws` front end and the upstream engine behind it, one file
//!   per concept; `openai_api.rs`: the `/v1` front end; `http_surface.rs`:
//!   `/healthz`, `/metrics`, the demo upstream; `browser/`: the page in
//!   a real browser; `providers.rs` and `proxy.rs`: the provider file and
//!   the outbound proxy, end to end;
//! * unit tests of the pure modules: `completion.rs`, `config.rs`,
//!   `policy.rs`, `protocol.rs`, `sse.rs` (and parts of `proxy.rs`);
//! * `doors/`: issue 10's doors on the HTTP/WebSocket side, a file per
//!   item (frame sizes, body deadline, hosts and origins, log floods, the
//!   metrics listener, HTTP details);
//! * `redis_store.rs`: several instances as one through a real Redis
//!   (`--resume-store redis://…`): cross-instance resume, cancel, owner
//!   death, TTLs, shared limits, Redis lost and back;
//! * `harness.rs`: self-checks of `support/`.

mod support;

mod browser;
mod completion;
mod config;
mod doors;
mod framing;
mod harness;
mod http_surface;
mod openai_api;
mod policy;
mod protocol;
mod providers;
mod proxy;
mod redact;
mod redis_store;
mod resume;
mod sse;
mod upstream_limits;
mod ws;
