//! What every worker of one gateway shares: configuration, metrics,
//! admission, the chats' logs and the shutdown state.

use tokio::sync::watch;

use std::sync::Arc;

use crate::admission::Admission;
use crate::chats::{Chats, RedisStore};
use crate::config::Config;
use crate::metrics::Metrics;

/// Shared by every worker, session and chat of one gateway.
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub admission: Admission,
    /// Every resumable chat, by session and id.
    pub chats: Arc<Chats>,
    closing: watch::Sender<bool>,
    ending: watch::Sender<bool>,
}

impl Shared {
    /// `store`: the shared resume store (`--resume-store redis://…`),
    /// already connected, or `None` (`memory`).
    pub fn new(config: Config, metrics: Metrics, store: Option<Arc<RedisStore>>) -> Shared {
        Shared {
            admission: Admission::with_store(&config, metrics.clone(), store.clone()),
            chats: Chats::with_store(config.resume, metrics.clone(), store),
            config,
            metrics,
            closing: watch::Sender::new(false),
            ending: watch::Sender::new(false),
        }
    }

    /// Whether the gateway is shutting down (no new sockets or chats).
    pub fn draining(&self) -> bool {
        self.admission.draining()
    }

    /// Starts the drain: new sockets and chats are refused from now on.
    pub fn start_draining(&self) {
        self.admission.start_draining();
    }

    /// Tells every chat still running to end now, with its terminal frame
    /// (the shutdown grace period is over).
    pub fn end_chats(&self) {
        self.ending.send_replace(true);
    }

    /// Resolves when `end_chats` has been called.
    pub fn chats_ending(&self) -> watch::Receiver<bool> {
        self.ending.subscribe()
    }

    /// Tells every socket to close now (code 1001).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when `close_all` has been called.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}
