//! Issue 10's doors on the HTTP/WebSocket side, one file per item: each
//! test here failed before its fix (the file says how) and passes after.

mod body_deadline; // item 2
mod frame_guard; // item 1
mod hosts_and_origins; // item 7
mod http_details; // item 12
mod log_flood; // item 8
mod metrics_listener; // item 9
