//! The demo page and its assets, embedded in the binary (so it runs from
//! any directory) and served under `/` and `/static/…`.
//!
//! To ship a new file of `static/`, add one line to [`ASSETS`]; its
//! content type follows from its extension.

/// One embedded file.
pub struct Asset {
    /// Its name under `/static/`.
    pub name: &'static str,
    pub body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        &[$(Asset { name: $name, body: include_bytes!(concat!("../static/", $name)) }),*]
    };
}

/// Every file served under `/static/`.
pub const ASSETS: &[Asset] = assets![
    "app.js",
    "attachments.js",
    "dom.js",
    "markdown.js",
    "netfly-client.js",
    "storage.js",
    "style.css",
    "turn.js",
];

/// The page served at `/`.
pub const INDEX_HTML: &[u8] = include_bytes!("../static/index.html");

/// The embedded file called `name`, if any.
pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The `Content-Type` of a file, from its extension.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
