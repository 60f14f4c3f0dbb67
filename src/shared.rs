//! What every worker of one gateway shares: configuration, the resolved
//! upstreams, metrics and the shutdown state.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use crate::admission::Admission;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::target::Targets;

/// Shared by every worker, session and chat of one gateway.
pub struct Shared {
    pub config: Config,
    pub targets: Targets,
    pub metrics: Metrics,
    pub admission: Admission,
    draining: AtomicBool,
    closing: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: Config, targets: Targets, metrics: Metrics) -> Shared {
        Shared {
            admission: Admission::new(&config),
            config,
            targets,
            metrics,
            draining: AtomicBool::new(false),
            closing: watch::Sender::new(false),
        }
    }

    /// Whether the gateway is shutting down (no new sockets or chats).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: new sockets and chats are refused from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
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
