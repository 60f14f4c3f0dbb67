//! netfly: a real-time streaming gateway between browsers (WebSocket) and
//! OpenAI-compatible chat-completions APIs (SSE). See README.md for the
//! big picture and `../shared/PROTOCOL.md` for the wire contract.

// The front ends and the plumbing that wires them: internal.
mod assets;
mod chats;
mod demo;
mod openai_api;
mod server;
mod session;
mod shared;

// Public for the tests, fuzz targets and tools that drive them directly:
// the configuration, the wire types, the pure parsers and policies.
pub mod admission;
pub mod config;
pub mod error;
pub mod logsafe;
pub mod metrics;
pub mod protocol;
pub mod upstream;
pub mod ws_guard;

pub use config::Config;
pub use server::Gateway;
