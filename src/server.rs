//! The HTTP surface (PROTOCOL.md §2) and the running gateway.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::{Actor, Addr};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

use crate::admission::Refusal;
use crate::assets;
use crate::config::{Config, UpstreamSpec};
use crate::demo::{self, Demo};
use crate::metrics::Metrics;
use crate::session;
use crate::shared::Shared;
use crate::upstream::target::Targets;
use crate::upstream::Upstream;

/// What every request handler of one worker can reach.
struct State {
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
}

async fn ws_route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> actix_web::Result<HttpResponse> {
    let shared = &state.shared;
    if shared.draining() {
        shared
            .metrics
            .ws_refused_total
            .with_label_values(&["draining"])
            .inc();
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .body("server shutting down\n"));
    }
    let refusal = match shared.admission.admit_socket(&req, &shared.config) {
        Ok(permit) => {
            return session::start(
                &req,
                payload,
                shared.clone(),
                state.upstream.clone(),
                permit,
            )
        }
        Err(r) => r,
    };
    shared
        .metrics
        .ws_refused_total
        .with_label_values(&[refusal.label()])
        .inc();
    match refusal {
        Refusal::Origin(origin) => {
            log::info!("websocket refused: origin {origin:?} not allowed");
            Ok(HttpResponse::Forbidden().body("origin not allowed\n"))
        }
        Refusal::Unauthorized => Ok(HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .body("a valid token is required (?token= or Authorization: Bearer)\n")),
        Refusal::TooManyFromIp => Ok(HttpResponse::TooManyRequests()
            .insert_header((header::RETRY_AFTER, "1"))
            .body("too many connections from this address\n")),
        Refusal::Full => Ok(HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .body("too many connections\n")),
    }
}

async fn healthz(state: web::Data<State>) -> HttpResponse {
    if state.shared.draining() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining")
    } else {
        HttpResponse::Ok().content_type("text/plain").body("ok")
    }
}

async fn metrics_route(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.shared.metrics.render())
}

fn asset(body: &'static [u8], content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset(assets::INDEX_HTML, "text/html; charset=utf-8")
}

async fn static_file(path: web::Path<String>) -> HttpResponse {
    match assets::find(path.as_str()) {
        Some(a) => asset(a.body, assets::content_type(a.name)),
        None => HttpResponse::NotFound().body(
            "not found
",
        ),
    }
}

/// A running gateway: the HTTP/WebSocket server and, when configured, the
/// demo upstream.
pub struct Gateway {
    /// The address actually bound (the real port when port 0 was asked).
    pub addr: SocketAddr,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<io::Result<()>>,
    demo: Option<Demo>,
    shared: Arc<Shared>,
    reaper: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds `config.bind` and serves in the background on the current
    /// actix runtime.
    pub async fn start(config: Config) -> io::Result<Gateway> {
        // rustls needs its crypto provider before the first client exists,
        // even for plain-http upstreams. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let demo = if config
            .upstreams
            .iter()
            .any(|u| matches!(u, UpstreamSpec::Demo))
        {
            Some(demo::start(config.demo_word_delay)?)
        } else {
            None
        };
        let targets = Arc::new(Targets::resolve(
            &config,
            demo.as_ref().map(|d| d.url()).as_deref(),
        ));
        let listener = std::net::TcpListener::bind(config.bind)?;
        let addr = listener.local_addr()?;
        let metrics = Metrics::new().map_err(io::Error::other)?;
        let shared = Arc::new(Shared::new(config, metrics));
        let reaper = actix_rt::spawn(shared.chats.clone().reap());
        let shared_out = shared.clone();
        let user_timeout = shared.config.client_timeout;
        let workers = shared.config.workers;
        let server = HttpServer::new(move || {
            let upstream = Upstream::new(shared.clone(), targets.clone()).start();
            App::new()
                .configure(|cfg| crate::openai_api::configure(cfg, &shared, &upstream))
                .app_data(web::Data::new(State {
                    shared: shared.clone(),
                    upstream,
                }))
                .route("/ws", web::get().to(ws_route))
                .route("/healthz", web::get().to(healthz))
                .route("/metrics", web::get().to(metrics_route))
                .route("/", web::get().to(index))
                .route("/static/{file}", web::get().to(static_file))
        })
        .tcp_nodelay(true)
        // A browser that stops reading stops the actor that serves its
        // socket (actix drives it only while the connection can take more
        // bytes), so the heartbeat alone cannot drop it. The kernel can: data
        // left unacknowledged (or unsent behind a zero window) longer than
        // the client timeout aborts the connection, which ends the session,
        // its chats and their upstream requests.
        .on_connect(move |conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let sock = socket2::SockRef::from(tcp);
                if let Err(e) = sock.set_tcp_user_timeout(Some(user_timeout)) {
                    log::debug!("TCP_USER_TIMEOUT not set: {e}");
                }
            }
        })
        // A client's FIN ends its request at once (a half-closed HTTP client
        // is gone): its streamed answer is dropped and the upstream cancelled.
        .h1_allow_half_closed(false)
        .backlog(4096)
        .max_connections(100_000)
        .workers(workers)
        .shutdown_timeout(1)
        // Signals are ours (see `Gateway::shutdown`): actix's own handling
        // would cut WebSockets without a close frame.
        .disable_signals();
        let server = server.listen(listener)?.run();
        let handle = server.handle();
        let server = actix_rt::spawn(server);
        Ok(Gateway {
            addr,
            handle,
            server,
            demo,
            shared: shared_out,
            reaper,
        })
    }

    /// Waits until the server stops (on a signal, when the binary handles
    /// them), then stops the demo upstream.
    pub async fn wait(self) {
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("server error: {e}"),
            Err(e) => log::error!("server task failed: {e}"),
        }
        if let Some(demo) = self.demo {
            demo.handle.stop(false).await;
        }
    }

    /// Stops the server now: every chat still running ends with an
    /// `upstream_unavailable` error, every socket is closed (1001) and the
    /// server stopped. See [`Gateway::shutdown`] for the graceful path.
    pub async fn stop(self, graceful: bool) {
        self.shared.start_draining();
        // Every chat still running ends with its terminal frame (PROTOCOL.md
        // §1), detached ones too; sockets then write what their chats' logs
        // hold before their close frame.
        self.shared.end_chats();
        let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        self.shared.admission.all_chats_ended(settle).await;
        self.shared.close_all();
        self.reaper.abort();
        if graceful {
            // Let the close frames reach the browsers.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.handle.stop(graceful).await;
        self.wait().await;
    }

    /// The graceful drain of PROTOCOL.md §1: refuse new sockets and chats
    /// (`/healthz` answers 503), give chats in flight up to the grace period
    /// to finish, then close every socket with 1001 and stop.
    pub async fn shutdown(self) {
        self.shared.start_draining();
        let grace = self.shared.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        log::info!(
            "draining: {} chats in flight, up to {} ms to finish",
            self.shared.metrics.chats_active.get(),
            grace.as_millis()
        );
        if !self.shared.admission.all_chats_ended(deadline).await {
            log::warn!(
                "grace period over: closing sockets with {} chats in flight",
                self.shared.metrics.chats_active.get()
            );
        }
        self.stop(true).await;
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }
}
