//! The provider file (`--config`): parsing, model maps, defaults under
//! client params, headers, keys from the environment, routes.

use std::time::Duration;

use netfly::config::providers::ProviderFile;
use serde_json::json;

use crate::support::fake::{FakeUpstream, Reply};
use crate::support::ws::WsClient;
use crate::support::{
    check_chat_frames, content_of, expect_done, start_gateway_with, try_test_config,
};

const T: Duration = Duration::from_secs(10);

use crate::support::temp_file::write_file;

#[test]
fn the_shipped_example_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/netfly.toml");
    let file = ProviderFile::load(std::path::Path::new(path)).expect("example parses");
    assert_eq!(file.upstreams.len(), 3);
    assert_eq!(file.upstreams[0].name, "free-netfly");
    assert_eq!(
        file.upstreams[0].url.as_str(),
        "https://free.netfly.top/api/openai/v1/chat/completions"
    );
    assert_eq!(file.upstreams[0].defaults.temperature, Some(0.5));
    assert_eq!(file.derived_models().expect("models")[0], "gpt-3.5-turbo");
    let c = try_test_config(&["--config", path], &[]).expect("config from example");
    assert_eq!(c.models[0], "gpt-3.5-turbo");
    assert_eq!(c.routes["gpt-4"], vec!["openai", "free-netfly"]);
}

#[test]
fn invalid_files_are_refused_with_the_reason() {
    let cases = [
        ("", "no [[upstream]]"),
        ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n", "not an http"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://x/v1\"\n[[upstream]]\nname = \"a\"\nurl = \"http://y/v1\"\n",
            "used twice",
        ),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://x/v1\"\n[routes]\nm = [\"b\"]\n",
            "unknown upstream",
        ),
        ("[[upstream]]\nname = \"a\"\nurl = \"http://x/v1\"\ncolour = 1\n", "colour"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://x/v1\"\n[upstream.defaults]\nlogit_bias = 1\n",
            "logit_bias",
        ),
        ("[[upstream]]\nname = \"a\"\nurl = \"http://x/v1\"\nmax_attempts = 0\n", "max_attempts"),
    ];
    for (text, want) in cases {
        let f = write_file(text);
        let err = try_test_config(&["--config", f.path()], &[]).expect_err(text);
        assert!(err.contains(want), "{err:?} should mention {want:?}");
        assert!(err.contains(f.path()), "{err:?} should name the file");
    }
    let err = try_test_config(&["--config", "/nonexistent/netfly.toml"], &[]).expect_err("missing");
    assert!(err.contains("/nonexistent/netfly.toml"), "{err}");
    // A model no upstream serves is refused.
    let f = write_file("models = [\"x\"]\n[[upstream]]\nname = \"a\"\nurl = \"http://h/v1\"\n[upstream.models]\ny = \"y\"\n");
    let err = try_test_config(&["--config", f.path()], &[]).expect_err("unserved");
    assert!(err.contains("\"x\""), "{err}");
}

#[actix_web::test]
async fn model_map_defaults_headers_and_key_reach_the_upstream() {
    let fake = FakeUpstream::start(vec![Reply::sse_words(&["ok"])]);
    let f = write_file(&format!(
        r#"
[[upstream]]
name = "p"
url = "{url}"
api_key_env = "P_KEY"
[upstream.headers]
x-title = "netfly test"
user-agent = "Browserish/1.0"
[upstream.models]
"fast" = "vendor-fast-001"
[upstream.defaults]
temperature = 0.5
top_p = 1
presence_penalty = 0
"#,
        url = fake.url()
    ));
    let c = try_test_config(&["--config", f.path()], &[("P_KEY", "sk-provider")]).expect("config");
    assert_eq!(c.models, vec!["fast"]);
    let gw = start_gateway_with(c).await;
    let mut ws = WsClient::connect(gw.addr).await;
    ws.send_json(&json!({"type": "chat", "id": "a", "model": "fast",
        "messages": [{"role": "user", "content": "hi"}], "params": {"temperature": 1.5}}))
        .await;
    let frames = ws.chat_until_terminal("a", T).await;
    check_chat_frames("a", &frames);
    expect_done(&frames);
    let req = fake.request(0);
    let body = req.json();
    assert_eq!(body["model"], "vendor-fast-001");
    // The client's temperature wins; the provider's other defaults apply.
    assert_eq!(body["temperature"], 1.5);
    assert_eq!(body["top_p"], 1.0);
    assert_eq!(body["presence_penalty"], 0.0);
    assert!(body.get("frequency_penalty").is_none());
    assert_eq!(req.header("x-title"), Some("netfly test"));
    assert_eq!(req.header("user-agent"), Some("Browserish/1.0"));
    assert_eq!(req.header("authorization"), Some("Bearer sk-provider"));
    gw.stop(false).await;
}

#[actix_web::test]
async fn routes_set_the_fallback_order_per_model() {
    let down = FakeUpstream::start(vec![Reply::status(503)]);
    let up = FakeUpstream::start(vec![Reply::sse_words(&["from ", "b"])]);
    let f = write_file(&format!(
        r#"
models = ["m1", "m2"]
[[upstream]]
name = "a"
url = "{a}"
max_attempts = 2
[[upstream]]
name = "b"
url = "{b}"
[routes]
"m2" = ["b"]
"#,
        a = down.url(),
        b = up.url()
    ));
    let gw =
        start_gateway_with(try_test_config(&["--config", f.path()], &[]).expect("config")).await;
    let mut ws = WsClient::connect(gw.addr).await;
    // m2 goes straight to b: upstream a never sees it.
    ws.send_json(&json!({"type": "chat", "id": "x", "model": "m2",
        "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let frames = ws.chat_until_terminal("x", T).await;
    assert_eq!(content_of(&frames), "from b");
    assert_eq!(down.attempts(), 0);
    // m1 has no route: a (2 attempts, both 503), then b.
    ws.send_json(&json!({"type": "chat", "id": "y", "model": "m1",
        "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    let frames = ws.chat_until_terminal("y", T).await;
    check_chat_frames("y", &frames);
    assert_eq!(content_of(&frames), "from b");
    assert_eq!(down.attempts(), 2);
    assert_eq!(up.attempts(), 2);
    gw.stop(false).await;
}

#[actix_web::test]
async fn the_upstream_flag_overrides_the_file() {
    let fake = FakeUpstream::start(vec![Reply::sse_words(&["flag"])]);
    let f = write_file("[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/v1\"\n");
    let url = fake.url();
    let c = try_test_config(&["--config", f.path(), "--upstream", &url], &[]).expect("config");
    let gw = start_gateway_with(c).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let frames = ws.chat("z", "hi", T).await;
    assert_eq!(content_of(&frames), "flag");
    gw.stop(false).await;
}
