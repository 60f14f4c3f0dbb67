//! Prometheus metrics (PROTOCOL.md §6), one registry per gateway so that
//! several gateways in one process (tests) never mix their counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every series the gateway exports.
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
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

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
        let upstream_first_byte_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "netfly_upstream_first_byte_seconds",
                "Upstream request sent to response headers",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
        )?;
        let time_to_first_delta_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "netfly_time_to_first_delta_seconds",
                "Chat accepted to first delta queued on the WebSocket",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
        )?;
        let delta_added_latency_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "netfly_delta_added_latency_seconds",
                "Upstream read to WebSocket frame queued, per delta",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
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
        registry.register(Box::new(ws_connections.clone()))?;
        registry.register(Box::new(chats_active.clone()))?;
        registry.register(Box::new(chats_total.clone()))?;
        registry.register(Box::new(upstream_attempts_total.clone()))?;
        registry.register(Box::new(deltas_total.clone()))?;
        registry.register(Box::new(upstream_first_byte_seconds.clone()))?;
        registry.register(Box::new(time_to_first_delta_seconds.clone()))?;
        registry.register(Box::new(delta_added_latency_seconds.clone()))?;
        registry.register(Box::new(ws_refused_total.clone()))?;
        registry.register(Box::new(ws_slow_consumer_closed_total.clone()))?;
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
        })
    }

    /// Counts one ended chat.
    pub fn chat_ended(&self, outcome: &str) {
        self.chats_total.with_label_values(&[outcome]).inc();
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
