//! A tiny self-deleting temp file (no extra crate), for provider files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

/// A file under the temp dir, removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(text: &str) -> TempFile {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("netfly-providers-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to a fresh temp file.
pub fn write_file(text: &str) -> TempFile {
    TempFile::new(text)
}
