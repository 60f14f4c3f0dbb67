//! The Upstream actor: owns this worker's HTTP client and the retry policy,
//! and runs each chat as its own spawned task (PROTOCOL.md §4).
//!
//! A chat task POSTs to the configured upstreams in order, retrying
//! transient failures with backoff until the first delta has gone to the
//! client (the commit point), parses the SSE body incrementally and sends
//! every fragment back through a `Recipient<ChatEvent>` with a bounded,
//! awaited send. Cancelling a chat aborts its task, which drops the awc
//! response and with it the upstream connection.

pub mod completion;
pub mod framing;
pub mod proxy;
pub mod redact;
pub mod retry;
pub mod sse;
pub mod target;

mod chat;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::task::JoinHandle;

use crate::chats::{ChatLog, EventKind};
use crate::error::{ChatError, Fault, Outcome};
use crate::protocol::{ApiRequest, ChatRequest};
use crate::shared::Shared;
use chat::ChatTask;
use target::{Target, Targets};

/// One event of the chat `key`, sent to an HTTP chat's recipient.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ChatEvent {
    pub key: u64,
    pub kind: EventKind,
}

/// Where a chat's events go.
#[derive(Clone)]
pub enum ChatSink {
    /// A WebSocket chat: its log, read by the sockets attached to it.
    Log(Arc<ChatLog>),
    /// An HTTP chat: a recipient taking its events with an awaited send.
    Events { key: u64, to: Recipient<ChatEvent> },
}

impl ChatSink {
    /// Hands every event of `batch` on (draining it) and waits while the
    /// reader is behind: a burst is queued at once and the wait applies to
    /// it as a whole, so it reaches a socket in one write. False: nobody
    /// takes the chat's events any more (ended, or its client gone).
    pub async fn emit(&self, batch: &mut Vec<EventKind>) -> bool {
        match self {
            ChatSink::Log(log) => {
                let open = log.append(batch.drain(..));
                if open {
                    log.writable().await;
                }
                open
            }
            ChatSink::Events { key, to } => {
                let Some(last) = batch.pop() else {
                    return true;
                };
                for kind in batch.drain(..) {
                    to.do_send(ChatEvent { key: *key, kind });
                }
                to.send(ChatEvent {
                    key: *key,
                    kind: last,
                })
                .await
                .is_ok()
            }
        }
    }

    /// Ends the chat with `err` now (its task is stopping).
    fn fail(&self, err: ChatError) {
        match self {
            ChatSink::Log(log) => {
                let outcome = Outcome::Failed(err.code());
                log.end(err, outcome);
            }
            ChatSink::Events { key, to } => to.do_send(ChatEvent {
                key: *key,
                kind: EventKind::Failed(err),
            }),
        }
    }

    /// How the chat ended, when its log knows.
    fn outcome(&self) -> Option<Outcome> {
        match self {
            ChatSink::Log(log) => log.outcome(),
            ChatSink::Events { .. } => None,
        }
    }
}

/// What a chat asks its upstreams: a WebSocket chat frame, or a `/v1` body
/// forwarded as the client sent it (PROTOCOL.md §7).
#[derive(Debug, Clone)]
pub enum ChatCall {
    Frame(ChatRequest),
    Api { id: String, request: ApiRequest },
}

impl ChatCall {
    /// The client's id for the chat (for logs).
    pub fn id(&self) -> &str {
        match self {
            ChatCall::Frame(r) => &r.id,
            ChatCall::Api { id, .. } => id,
        }
    }

    /// The client-facing model.
    pub fn model(&self) -> &str {
        match self {
            ChatCall::Frame(r) => &r.model,
            ChatCall::Api { request, .. } => &request.model,
        }
    }

    /// Whether upstream chunks reach the client as they are (`/v1`).
    pub fn passthrough(&self) -> bool {
        matches!(self, ChatCall::Api { .. })
    }
}

/// Start the chat `key` (unique per process, so a reused client id never
/// receives stale events); its events go to `sink`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StartChat {
    pub key: u64,
    pub call: ChatCall,
    pub sink: ChatSink,
}

/// Drop the chat `key` now (its upstream connection is closed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CancelChat {
    pub key: u64,
}

/// Internal: the chat task `key` has ended on its own.
#[derive(Message)]
#[rtype(result = "()")]
struct ChatFinished {
    key: u64,
}

/// One per worker: the awc client (not `Send`) and the running chats.
pub struct Upstream {
    shared: Arc<Shared>,
    /// The upstreams and each model's route.
    targets: Arc<Targets>,
    /// One client per target (its own timeouts, proxy and connection pool).
    clients: Rc<[awc::Client]>,
    tasks: HashMap<u64, JoinHandle<()>>,
}

impl Upstream {
    pub fn new(shared: Arc<Shared>, targets: Arc<Targets>) -> Self {
        let clients = targets.all().iter().map(build_client).collect();
        Upstream {
            shared,
            targets,
            clients,
            tasks: HashMap::new(),
        }
    }
}

/// The HTTP client of one target: TCP_NODELAY, no connection limit, pooled
/// keep-alive, the target's connect and first-byte timeouts, no redirects.
pub fn build_client(target: &Target) -> awc::Client {
    let policy = &target.policy;
    // Direct or through the proxy; TCP_NODELAY either way.
    let tcp = proxy::tcp_connector(target.proxy.clone());
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(policy.connect_timeout)
        .handshake_timeout(policy.connect_timeout)
        .limit(0)
        .conn_keep_alive(Duration::from_secs(30))
        .conn_lifetime(Duration::from_secs(300));
    awc::Client::builder()
        .connector(connector)
        .timeout(policy.first_byte_timeout)
        .disable_redirects()
        .finish()
}

impl Actor for Upstream {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        for (_, task) in self.tasks.drain() {
            task.abort();
        }
    }
}

impl Handler<StartChat> for Upstream {
    type Result = ();

    fn handle(&mut self, msg: StartChat, ctx: &mut Self::Context) {
        let key = msg.key;
        let sink = msg.sink;
        let chat = ChatTask {
            shared: self.shared.clone(),
            targets: self.targets.clone(),
            clients: self.clients.clone(),
            sink: sink.clone(),
            call: msg.call,
        };
        let me = ctx.address();
        let mut ending = self.shared.chats_ending();
        let handle = actix_rt::spawn(async move {
            // A panic inside one chat ends that chat only, with an error.
            let run =
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(chat.run()));
            let mut run = std::pin::pin!(run);
            tokio::select! {
                ran = &mut run => if ran.is_err() {
                    log::error!("chat task panicked; ending that chat only");
                    sink.fail(ChatError::UpstreamBroken(Fault::Internal));
                },
                // The shutdown grace period is over: the chat ends with its
                // terminal frame before its task goes.
                _ = ending.wait_for(|e| *e) => sink.fail(ChatError::UpstreamUnavailable(Fault::ShuttingDown)),
            }
            me.do_send(ChatFinished { key });
        });
        self.tasks.insert(key, handle);
    }
}

impl Handler<CancelChat> for Upstream {
    type Result = ();

    fn handle(&mut self, msg: CancelChat, _: &mut Self::Context) {
        if let Some(task) = self.tasks.remove(&msg.key) {
            task.abort();
        }
    }
}

impl Handler<ChatFinished> for Upstream {
    type Result = ();

    fn handle(&mut self, msg: ChatFinished, _: &mut Self::Context) {
        self.tasks.remove(&msg.key);
    }
}
