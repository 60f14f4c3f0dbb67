//! Prometheus metrics (PROTOCOL.md §6), one registry per gateway so that
//! several gateways in one process (tests) never mix their counts.

use std::time::Instant;

use crate::error::Outcome;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every series the gateway exports (a clone shares them).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSockets.
    pub ws_connections: IntGauge,
    /// Chats in flight.
    pub chats_active: IntGauge,
    /// Chats ended, by outcome (`done`, `cancelled`, `disconnected` or an error code).
    pub chats_total: IntCounterVec,
    /// Upstream attempts, by result (`ok`, `connect`, `timeout`, `http_4xx`, `http_5xx`, …).
    pub upstream_attempts_total: IntCounterVec,
    /// Delta frames sent to browsers.
    pub deltas_total: IntCounter,
    /// Request sent → upstream response headers.
    pub upstream_first_byte_seconds: Histogram,
    /// Chat accepted → first delta written to the socket.
    pub time_to_first_delta_seconds: Histogram,
    /// Upstream bytes read → WebSocket frame queued: what the gateway adds per delta.
    pub delta_added_latency_seconds: Histogram,
    /// WebSocket upgrades refused, by reason (`origin`, `auth`, `full`, `draining`).
    pub ws_refused_total: IntCounterVec,
    /// Sockets closed because their unsent output passed the high-water mark.
    pub ws_slow_consumer_closed_total: IntCounter,
    /// Chats (running, or ended and retained) with no socket attached.
    pub chats_detached: IntGauge,
    pub resume_retained_bytes: IntGauge,
    /// `resume` frames, by result (`ok`, `unavailable`, `bad_request`, `busy`).
    pub resumes_total: IntCounterVec,
    /// Pieces of model reasoning received from upstreams.
    pub reasoning_deltas_total: IntCounter,
    /// Round trips to the resume store (Redis) that failed.
    pub resume_store_errors_total: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, prometheus::Error> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
}

impl Metrics {
    /// Registers every series in a fresh registry.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let ws_connections = IntGauge::new("netfly_ws_connections", "Open WebSockets")?;
        let chats_active = IntGauge::new("netfly_chats_active", "Chats in flight")?;
        let chats_total = IntCounterVec::new(
            Opts::new("netfly_chats_total", "Chats ended, by outcome"),
            &["outcome"],
        )?;
        let upstream_attempts_total = IntCounterVec::new(
            Opts::new(
                "netfly_upstream_attempts_total",
                "Upstream attempts, by result",
            ),
            &["result"],
        )?;
        let deltas_total = IntCounter::new("netfly_deltas_total", "Delta frames sent")?;
        let upstream_first_byte_seconds = histogram(
            "netfly_upstream_first_byte_seconds",
            "Upstream request sent to response headers",
            UPSTREAM_BUCKETS,
        )?;
        let time_to_first_delta_seconds = histogram(
            "netfly_time_to_first_delta_seconds",
            "Chat accepted to first delta queued on the WebSocket",
            UPSTREAM_BUCKETS,
        )?;
        let delta_added_latency_seconds = histogram(
            "netfly_delta_added_latency_seconds",
            "Upstream read to WebSocket frame queued, per delta",
            LATENCY_BUCKETS,
        )?;
        let ws_refused_total = IntCounterVec::new(
            Opts::new(
                "netfly_ws_refused_total",
                "WebSocket upgrades refused, by reason",
            ),
            &["reason"],
        )?;
        let ws_slow_consumer_closed_total = IntCounter::new(
            "netfly_ws_slow_consumer_closed_total",
            "Sockets closed with 1008 because the browser did not read",
        )?;
        let chats_detached = IntGauge::new(
            "netfly_chats_detached",
            "Chats, running or ended but retained, with no socket attached",
        )?;
        let resume_retained_bytes = IntGauge::new(
            "netfly_resume_retained_bytes",
            "Memory the chat logs retain for resumes, counted against --resume-max-bytes",
        )?;
        let resumes_total = IntCounterVec::new(
            Opts::new("netfly_resumes_total", "Resume frames, by result"),
            &["result"],
        )?;
        let reasoning_deltas_total = IntCounter::new(
            "netfly_reasoning_deltas_total",
            "Pieces of model reasoning received from upstreams",
        )?;
        let resume_store_errors_total = IntCounter::new(
            "netfly_resume_store_errors_total",
            "Round trips to the resume store (Redis) that failed",
        )?;
        let collectors: [Box<dyn prometheus::core::Collector>; 15] = [
            Box::new(ws_connections.clone()),
            Box::new(chats_active.clone()),
            Box::new(chats_total.clone()),
            Box::new(upstream_attempts_total.clone()),
            Box::new(deltas_total.clone()),
            Box::new(upstream_first_byte_seconds.clone()),
            Box::new(time_to_first_delta_seconds.clone()),
            Box::new(delta_added_latency_seconds.clone()),
            Box::new(ws_refused_total.clone()),
            Box::new(ws_slow_consumer_closed_total.clone()),
            Box::new(chats_detached.clone()),
            Box::new(resume_retained_bytes.clone()),
            Box::new(resumes_total.clone()),
            Box::new(reasoning_deltas_total.clone()),
            Box::new(resume_store_errors_total.clone()),
        ];
        for c in collectors {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            ws_connections,
            chats_active,
            chats_total,
            upstream_attempts_total,
            deltas_total,
            upstream_first_byte_seconds,
            time_to_first_delta_seconds,
            delta_added_latency_seconds,
            ws_refused_total,
            ws_slow_consumer_closed_total,
            chats_detached,
            resume_retained_bytes,
            resumes_total,
            reasoning_deltas_total,
            resume_store_errors_total,
        })
    }

    /// Counts one chat that ended without ever being in flight (refused).
    pub fn chat_ended(&self, outcome: Outcome) {
        self.chats_total.with_label_values(&[outcome.label()]).inc();
    }

    /// A chat is now in flight.
    pub fn chat_started(&self) {
        self.chats_active.inc();
    }

    /// A chat that was in flight ended with `outcome`.
    pub fn chat_finished(&self, outcome: Outcome) {
        self.chats_active.dec();
        self.chat_ended(outcome);
    }

    /// One delta handed to a client: its bytes were read from the upstream
    /// at `read_at`; `first` when it is its chat's first (accepted at
    /// `accepted`).
    pub fn delta_sent(&self, read_at: Instant, accepted: Instant, first: bool) {
        self.deltas_total.inc();
        self.delta_added_latency_seconds
            .observe(read_at.elapsed().as_secs_f64());
        if first {
            self.time_to_first_delta_seconds
                .observe(accepted.elapsed().as_secs_f64());
        }
    }

    /// Counts one upstream attempt.
    pub fn attempt(&self, result: &str) {
        self.upstream_attempts_total
            .with_label_values(&[result])
            .inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            log::error!("metrics encoding failed: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
