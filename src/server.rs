//! The HTTP surface (PROTOCOL.md §2) and the running gateway.
//!
//! Every route answers `HEAD` where it answers `GET`, and a method a route
//! does not take gets 405 with `Allow`. The `Host` policy
//! (`--allowed-hosts`) guards every route a browser uses — `/ws`, `/v1/…`,
//! `/`, `/static/…` — so a page on a rebound name reaches nothing; `/healthz`
//! (probes name the service however their platform does, and it says only
//! "ok") and `/metrics` (scrapers likewise; put it on `--metrics-bind` to
//! keep it private) are exempt. The server is actix-web's app on actix-http's
//! service built by hand (what `HttpServer` does), for one thing
//! `HttpServer` cannot set: the `Expect: 100-continue` handler, which
//! refuses a declared body over the limit with 413 before any
//! `100 Continue`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_http::body::BoxBody;
use actix_http::{ConnectionType, HttpService, Request, Response};
use actix_service::{
    fn_service, map_config, IntoServiceFactory as _, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::{AppConfig, ServerHandle, Service as _, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse};
use futures_util::future::{ready, Either};

use crate::admission::{self, ApiRefusal, Refusal};
use crate::assets;
use crate::chats::store::StoreTasks;
use crate::chats::RedisStore;
use crate::config::{Config, ResumeStore, UpstreamSpec};
use crate::demo::{self, Demo};
use crate::logsafe::{self, clip};
use crate::metrics::Metrics;
use crate::openai_api;
use crate::session;
use crate::shared::Shared;
use crate::upstream::target::Targets;
use crate::upstream::Upstream;

/// What every request handler of one worker can reach.
struct State {
    shared: Arc<Shared>,
    upstream: Addr<Upstream>,
}

/// 426 for a `Sec-WebSocket-Version` other than 13 (RFC 6455 §4.2.2), with
/// the version this server speaks.
fn unsupported_ws_version(req: &HttpRequest) -> Option<HttpResponse> {
    let version = req.headers().get(header::SEC_WEBSOCKET_VERSION)?;
    if version.as_bytes() == b"13" {
        return None;
    }
    Some(
        HttpResponse::build(StatusCode::UPGRADE_REQUIRED)
            .insert_header((header::SEC_WEBSOCKET_VERSION, "13"))
            .insert_header((header::UPGRADE, "websocket"))
            .content_type("text/plain; charset=utf-8")
            .body("unsupported WebSocket version: this server speaks version 13\n"),
    )
}

async fn ws_route(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> actix_web::Result<HttpResponse> {
    if let Some(resp) = unsupported_ws_version(&req) {
        return Ok(resp);
    }
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
            logsafe::refusal(
                "origin",
                format_args!("websocket refused: origin {} not allowed", clip(&origin)),
            );
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

async fn metrics_route(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
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
        None => HttpResponse::NotFound().body("not found\n"),
    }
}

/// A resource answering `GET` and `HEAD` with `handler` (actix-http sends
/// a `HEAD` answer's head only); other methods get 405 with `Allow`.
fn get_and_head<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}

/// The `Host` policy in front of every route but `/healthz` and `/metrics`
/// (see the module documentation): `None` lets the request through.
fn host_refusal(req: &ServiceRequest, shared: &Shared) -> Option<HttpResponse> {
    let path = req.path();
    if path == "/healthz" || path == "/metrics" {
        return None;
    }
    let host = admission::host_refused(req.request(), &shared.config.allowed_hosts)?;
    logsafe::refusal(
        "host",
        format_args!(
            "request for {} refused: Host {} not allowed (see --allowed-hosts)",
            clip(path),
            clip(&host)
        ),
    );
    let message = format!(
        "Host {} is not allowed: add the name to --allowed-hosts (NETFLY_ALLOWED_HOSTS)",
        clip(&host)
    );
    if path == "/ws" {
        shared
            .metrics
            .ws_refused_total
            .with_label_values(&["host"])
            .inc();
    }
    Some(if path.starts_with("/v1/") {
        openai_api::error_response(StatusCode::FORBIDDEN, "host_not_allowed", &message)
    } else {
        HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body(message + "\n")
    })
}

/// The `Expect: 100-continue` handler: a declared body over `max` bytes
/// (no route takes more) gets 413 at once, never `100 Continue`.
async fn expect_continue(req: Request, max: usize) -> Result<Request, Response<BoxBody>> {
    match admission::declared_length(&req.head().headers) {
        Some(declared) if declared > max as u64 => {
            logsafe::refusal(
                "body_size",
                format_args!(
                    "request refused before its body: {declared} bytes declared, limit {max}"
                ),
            );
            let refusal = ApiRefusal::TooLarge { declared, max };
            let mut resp =
                openai_api::error_response(refusal.status(), refusal.code(), &refusal.to_string());
            resp.head_mut().set_connection_type(ConnectionType::Close);
            Err(resp.into())
        }
        _ => Ok(req),
    }
}

/// Connections the kernel completes and queues while every worker is busy
/// (or out of file descriptors); std's `TcpListener::bind` would queue 128.
const BACKLOG: i32 = 4096;

/// A listening socket on `addr` with a [`BACKLOG`]-deep accept queue.
fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does: a restarted gateway can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One worker's gateway app: the routes of PROTOCOL.md §2 behind the
/// `Host` policy, with this worker's Upstream actor.
fn gateway_app(
    shared: &Arc<Shared>,
    targets: &Arc<Targets>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let upstream = Upstream::new(shared.clone(), targets.clone()).start();
    let policy = shared.clone();
    let metrics_here = shared.config.metrics_bind.is_none();
    App::new()
        .wrap_fn(move |req, srv| match host_refusal(&req, &policy) {
            None => Either::Left(srv.call(req)),
            Some(resp) => Either::Right(ready(Ok(req.into_response(resp)))),
        })
        .configure(|cfg| openai_api::configure(cfg, shared, &upstream))
        .app_data(web::Data::new(State {
            shared: shared.clone(),
            upstream,
        }))
        .app_data(web::Data::new(shared.metrics.clone()))
        .service(web::resource("/ws").route(web::get().to(ws_route)))
        .service(get_and_head("/healthz", healthz))
        .service(get_and_head("/", index))
        .service(get_and_head("/static/{file}", static_file))
        .configure(|cfg| {
            // With --metrics-bind, /metrics lives on its own listener only.
            if metrics_here {
                cfg.service(get_and_head("/metrics", metrics_route));
            }
        })
}

/// The `--metrics-bind` listener's app: `/metrics` and nothing else.
fn metrics_app(
    metrics: &Metrics,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(metrics.clone()))
        .service(get_and_head("/metrics", metrics_route))
}

/// actix-http's HTTP/1 service around `app`, set as `HttpServer` would set
/// it, plus our `Expect: 100-continue` handler.
fn http_service<T>(
    config: &Config,
    addr: SocketAddr,
    app: App<T>,
) -> impl ServiceFactory<
    actix_rt::net::TcpStream,
    Config = (),
    Response = (),
    Error = actix_http::error::DispatchError,
    InitError = (),
>
where
    T: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    let user_timeout = config.client_timeout;
    let max_body = config.max_frame_bytes;
    HttpService::build()
        // Slow request heads are cut at 5 s (bodies: --client-body-timeout-ms).
        .client_request_timeout(Duration::from_secs(5))
        .client_disconnect_timeout(Duration::from_secs(1))
        // A client's FIN ends its request at once (a half-closed HTTP client
        // is gone): its streamed answer is dropped and the upstream cancelled.
        .h1_allow_half_closed(false)
        .tcp_nodelay(true)
        .local_addr(addr)
        // A browser that stops reading stops the actor that serves its
        // socket (actix drives it only while the connection can take more
        // bytes), so the heartbeat alone cannot drop it. The kernel can: data
        // left unacknowledged (or unsent behind a zero window) longer than
        // the client timeout aborts the connection, which ends the session,
        // its chats and their upstream requests.
        .on_connect_ext(move |tcp: &actix_rt::net::TcpStream, _| {
            let sock = socket2::SockRef::from(tcp);
            if let Err(e) = sock.set_tcp_user_timeout(Some(user_timeout)) {
                log::debug!("TCP_USER_TIMEOUT not set: {e}");
            }
        })
        .expect(fn_service(move |req: Request| {
            expect_continue(req, max_body)
        }))
        .finish(map_config(
            app.into_factory()
                .map_err(|e: actix_web::Error| e.error_response()),
            |_| AppConfig::default(),
        ))
        .tcp()
}

/// A running gateway: the HTTP/WebSocket server and, when configured, the
/// demo upstream.
pub struct Gateway {
    /// The address actually bound (the real port when port 0 was asked).
    pub addr: SocketAddr,
    /// The `/metrics` listener's address, with `--metrics-bind`.
    pub metrics_addr: Option<SocketAddr>,
    handle: ServerHandle,
    server: tokio::task::JoinHandle<io::Result<()>>,
    demo: Option<Demo>,
    shared: Arc<Shared>,
    reaper: tokio::task::JoinHandle<()>,
    /// The shared resume store's writer and cancel listener, if any.
    store: Option<StoreTasks>,
}

impl Gateway {
    /// Binds `config.bind` and serves in the background on the current
    /// actix runtime.
    pub async fn start(config: Config) -> io::Result<Gateway> {
        // rustls needs its crypto provider before the first client exists,
        // even for plain-http upstreams. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();

        let metrics = Metrics::new().map_err(io::Error::other)?;
        // The shared store first: unreachable, the gateway does not start.
        let store = match &config.resume_store {
            ResumeStore::Memory => None,
            ResumeStore::Redis(url) => Some(
                RedisStore::connect(url, config.resume.window, metrics.clone())
                    .await
                    .map_err(io::Error::other)?,
            ),
        };
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
        let listener = bind_listener(config.bind)?;
        let addr = listener.local_addr()?;
        let metrics_listener = match config.metrics_bind {
            Some(bind) => Some(bind_listener(bind)?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let shared = Arc::new(Shared::new(config, metrics, store.clone()));
        let reaper = actix_rt::spawn(shared.chats.clone().reap());
        let store = store.map(|s| s.spawn(shared.chats.clone()));
        let shared_out = shared.clone();
        let workers = shared.config.workers;
        let mut builder = actix_server::Server::build()
            .workers(workers)
            .max_concurrent_connections(100_000)
            .shutdown_timeout(1)
            // Signals are ours (see `Gateway::shutdown`): actix's own handling
            // would cut WebSockets without a close frame.
            .disable_signals()
            .listen("netfly", listener, move || {
                http_service(&shared.config, addr, gateway_app(&shared, &targets))
            })?;
        if let (Some(listener), Some(metrics_addr)) = (metrics_listener, metrics_addr) {
            let shared = shared_out.clone();
            builder = builder.listen("netfly-metrics", listener, move || {
                http_service(&shared.config, metrics_addr, metrics_app(&shared.metrics))
            })?;
        }
        let server = builder.run();
        let handle = server.handle();
        let server = actix_rt::spawn(server);
        Ok(Gateway {
            addr,
            metrics_addr,
            handle,
            server,
            demo,
            shared: shared_out,
            reaper,
            store,
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
    pub async fn stop(mut self, graceful: bool) {
        self.shared.start_draining();
        // Every chat still running ends with its terminal frame (PROTOCOL.md
        // §1), detached ones too; sockets then write what their chats' logs
        // hold before their close frame.
        self.shared.end_chats();
        let settle = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        self.shared.admission.all_chats_ended(settle).await;
        self.shared.close_all();
        self.reaper.abort();
        if let Some(store) = self.store.take() {
            // The chats' last frames (and lease releases) reach the store.
            store.stop(std::time::Duration::from_secs(1)).await;
        }
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
