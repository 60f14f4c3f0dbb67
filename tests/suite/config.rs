//! Unit tests of flag/env parsing (src/config/mod.rs).

use std::time::Duration;

use netfly::config::{AllowedOrigins, UpstreamSpec, UpstreamUrl};
use netfly::Config;

use crate::support::env_lookup;

fn cfg(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
    Config::from_args(args.iter().copied(), env_lookup(env))
}

#[test]
fn defaults_match_the_protocol() {
    let c = cfg(&[], &[]).expect("defaults");
    assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
    assert!(matches!(c.upstreams[..], [UpstreamSpec::Demo]));
    assert_eq!(c.api_key, None);
    assert_eq!(c.models, vec!["gpt-3.5-turbo", "gpt-4"]);
    assert_eq!(c.default_model(), "gpt-3.5-turbo");
    assert_eq!(c.max_attempts, 5);
    assert_eq!(c.backoff_base, Duration::from_millis(500));
    assert_eq!(c.backoff_max, Duration::from_millis(8000));
    assert_eq!(c.connect_timeout, Duration::from_millis(10_000));
    assert_eq!(c.first_byte_timeout, Duration::from_millis(60_000));
    assert_eq!(c.idle_timeout, Duration::from_millis(60_000));
    assert_eq!(c.allowed_origins, AllowedOrigins::SameHost);
    assert!(c.auth_tokens.is_empty());
    assert_eq!(c.max_connections, 10_000);
    assert_eq!(c.max_streams_per_connection, 4);
    assert_eq!(c.max_frame_bytes, 1_048_576);
}

#[test]
fn env_is_read_and_the_flag_wins() {
    let c = cfg(
        &["--max-attempts", "2"],
        &[
            ("NETFLY_MAX_ATTEMPTS", "9"),
            ("NETFLY_MODELS", "a, b ,c"),
            ("NETFLY_API_KEY", "sk-x"),
            (
                "NETFLY_UPSTREAM",
                "https://api.example.com/v1/chat/completions,demo",
            ),
            ("NETFLY_ALLOWED_ORIGINS", "https://Chat.Example.com/"),
            ("NETFLY_AUTH_TOKENS", "t1,t2"),
            ("NETFLY_BIND", "127.0.0.1:0"),
        ],
    )
    .expect("valid");
    assert_eq!(c.max_attempts, 2);
    assert_eq!(c.models, vec!["a", "b", "c"]);
    assert_eq!(c.api_key.as_deref(), Some("sk-x"));
    let upstreams: Vec<String> = c.upstreams.iter().map(ToString::to_string).collect();
    assert_eq!(
        upstreams,
        vec!["https://api.example.com/v1/chat/completions", "demo"]
    );
    assert!(matches!(
        c.upstreams[..],
        [UpstreamSpec::Url(_), UpstreamSpec::Demo]
    ));
    assert_eq!(
        c.allowed_origins,
        AllowedOrigins::List(vec!["https://chat.example.com".into()])
    );
    assert_eq!(c.auth_tokens, vec!["t1", "t2"]);
    assert_eq!(c.bind.port(), 0);
    assert_eq!(
        cfg(&[], &[("NETFLY_ALLOWED_ORIGINS", "*")])
            .expect("any")
            .allowed_origins,
        AllowedOrigins::Any
    );
}

#[test]
fn bad_values_name_the_variable_and_the_value() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &[],
            &[("NETFLY_MAX_ATTEMPTS", "zero")],
            "NETFLY_MAX_ATTEMPTS",
            "zero",
        ),
        (&["--max-attempts", "0"], &[], "--max-attempts", "\"0\""),
        (
            &[],
            &[("NETFLY_BACKOFF_BASE_MS", "-5")],
            "NETFLY_BACKOFF_BASE_MS",
            "-5",
        ),
        (
            &[],
            &[("NETFLY_IDLE_TIMEOUT_MS", "0")],
            "NETFLY_IDLE_TIMEOUT_MS",
            "0",
        ),
        (&[], &[("NETFLY_BIND", "nowhere")], "NETFLY_BIND", "nowhere"),
        (
            &[],
            &[("NETFLY_UPSTREAM", "ftp://x/y")],
            "NETFLY_UPSTREAM",
            "ftp://x/y",
        ),
        (&[], &[("NETFLY_UPSTREAM", " , ")], "NETFLY_UPSTREAM", ","),
        (&[], &[("NETFLY_MODELS", "a,a")], "NETFLY_MODELS", "a,a"),
        (&[], &[("NETFLY_MODELS", "")], "NETFLY_MODELS", "\"\""),
        (
            &[],
            &[("NETFLY_ALLOWED_ORIGINS", "example.com")],
            "NETFLY_ALLOWED_ORIGINS",
            "example.com",
        ),
        (
            &[],
            &[("NETFLY_MAX_CONNECTIONS", "1e9")],
            "NETFLY_MAX_CONNECTIONS",
            "1e9",
        ),
        (
            &[],
            &[("NETFLY_MAX_STREAMS_PER_CONNECTION", "0")],
            "NETFLY_MAX_STREAMS_PER_CONNECTION",
            "0",
        ),
        (
            &[],
            &[("NETFLY_MAX_FRAME_BYTES", "big")],
            "NETFLY_MAX_FRAME_BYTES",
            "big",
        ),
    ];
    for (args, env, name, value) in cases {
        let err = cfg(args, env).expect_err(name);
        assert!(err.contains(name), "{err} should name {name}");
        assert!(err.contains(value), "{err} should show {value}");
    }
}

#[test]
fn unknown_flags_are_refused() {
    assert!(cfg(&["--nope"], &[]).is_err());
}

#[test]
fn url_host_keeps_only_host_and_port() {
    let host = |url: &str| UpstreamUrl::parse(url).map(|u| u.host().to_owned());
    assert_eq!(
        host("https://user:pw@api.example.com/v1/chat?key=1").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(
        host("http://127.0.0.1:9000/v1/chat/completions").as_deref(),
        Some("127.0.0.1:9000")
    );
    assert_eq!(host("mailto:x@y"), None);
}

#[test]
fn per_ip_limits_and_trusted_proxies_parse() {
    let c = cfg(
        &["--max-connections-per-ip", "3"],
        &[
            ("NETFLY_MAX_CHATS_PER_MINUTE_PER_IP", "60"),
            ("NETFLY_TRUSTED_PROXIES", "127.0.0.1, ::1"),
        ],
    )
    .expect("valid");
    assert_eq!(c.max_connections_per_ip, 3);
    assert_eq!(c.max_chats_per_minute_per_ip, 60);
    assert_eq!(c.trusted_proxies.len(), 2);
    let d = cfg(&[], &[]).expect("defaults");
    assert_eq!(
        (d.max_connections_per_ip, d.max_chats_per_minute_per_ip),
        (0, 0)
    );
    let err = cfg(&[], &[("NETFLY_TRUSTED_PROXIES", "proxy.local")]).expect_err("bad ip");
    assert!(
        err.contains("NETFLY_TRUSTED_PROXIES") && err.contains("proxy.local"),
        "{err}"
    );
}

#[test]
fn workers_default_to_the_cores_and_parse() {
    let d = cfg(&[], &[]).expect("defaults");
    assert!(d.workers >= 1);
    assert_eq!(
        cfg(&[], &[("NETFLY_WORKERS", "3")]).expect("env").workers,
        3
    );
    let err = cfg(&["--workers", "0"], &[]).expect_err("zero workers");
    assert!(err.contains("--workers"), "{err}");
}
