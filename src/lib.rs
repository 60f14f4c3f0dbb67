//! netfly: a real-time streaming gateway between browsers (WebSocket) and
//! OpenAI-compatible chat-completions APIs (SSE). See README.md for the
//! big picture and `../shared/PROTOCOL.md` for the wire contract.

pub mod admission;
pub mod assets;
pub mod chats;
pub mod config;
pub mod demo;
pub mod error;
pub mod logsafe;
pub mod metrics;
pub mod openai_api;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shared;
pub mod upstream;
pub mod ws_guard;

pub use config::Config;
pub use server::Gateway;
