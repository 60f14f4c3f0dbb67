//! Issue 10's doors on the HTTP/WebSocket side, one file per item: each
//! test here failed before its fix (the file says how) and passes after.

mod frame_guard; // item 1
