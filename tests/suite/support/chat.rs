//! One chat over `/ws`, start to finish, against a scripted upstream, and
//! what the tests read from its frames. The set-up most of the `/ws` tests
//! share: a gateway for one script, one chat, nothing after its end.

use std::time::Duration;

use serde_json::Value;

use super::fake::stalled_after_hel;
use super::{
    content_of, expect_done, fake_gateway_client, of_type, start_gateway, FakeUpstream, Reply,
    WsClient, WAIT,
};

/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);

/// Starts `script` as the only upstream of a gateway with `args`, runs one
/// chat ("hello") to its terminal frame, checks nothing follows it, stops
/// the gateway. Returns the chat's frames and the fake (for its records).
pub async fn run_chat(script: Vec<Reply>, args: &[&str]) -> (Vec<Value>, FakeUpstream) {
    let fake = FakeUpstream::start(script);
    let frames = chat_once(&[&["--upstream", &fake.url()][..], args].concat()).await;
    (frames, fake)
}

/// Starts a gateway with `args`, runs one chat ("hello") to its terminal
/// frame, checks nothing follows it, stops the gateway; returns the frames.
pub async fn chat_once(args: &[&str]) -> Vec<Value> {
    let gw = start_gateway(args).await;
    let mut ws = WsClient::connect(gw.addr).await;
    let frames = ws.chat("c1", "hello", WAIT).await;
    ws.expect_silence_for("c1", QUIET).await;
    gw.stop(false).await;
    frames
}

/// A chat whose first attempt gets `first` and whose second succeeds with
/// "ok" (checked): returns the frames and the fake.
pub async fn ok_on_the_second_attempt(first: Reply, args: &[&str]) -> (Vec<Value>, FakeUpstream) {
    let (frames, fake) = run_chat(vec![first, Reply::sse_words(&["ok"])], args).await;
    expect_done(&frames);
    assert_eq!(content_of(&frames), "ok");
    assert_eq!(fake.attempts(), 2);
    (frames, fake)
}

/// A gateway (with `args`) whose upstream sends "Hel" and then stalls, and
/// a client (answering pings or not) whose chat "k1" got that delta.
pub async fn client_mid_stream(
    args: &[&str],
    auto_pong: bool,
) -> (FakeUpstream, netfly::Gateway, WsClient) {
    let (fake, gw, mut ws) = fake_gateway_client(vec![stalled_after_hel()], args).await;
    ws.set_auto_pong(auto_pong);
    ws.send_chat("k1", "hi").await;
    ws.expect_type("k1", "delta", WAIT).await;
    (fake, gw, ws)
}

/// The `attempt` numbers of the `retry` frames, in order.
pub fn retry_attempts(frames: &[Value]) -> Vec<u64> {
    of_type(frames, "retry")
        .iter()
        .map(|f| f["attempt"].as_u64().unwrap())
        .collect()
}

/// The contents of the `delta` frames, in order.
pub fn deltas(frames: &[Value]) -> Vec<String> {
    of_type(frames, "delta")
        .iter()
        .map(|f| f["content"].as_str().unwrap().to_string())
        .collect()
}

/// Compares a forwarded param: the real-valued ones numerically (`-2` and
/// `-2.0` are the same JSON number), the integer and string ones exactly.
pub fn assert_close(actual: &Value, expected: &Value, what: &str) {
    let real = matches!(
        what,
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty"
    );
    match (actual.as_f64(), expected.as_f64()) {
        (Some(a), Some(e)) if real => {
            assert!((a - e).abs() < 1e-9, "{what}: {actual} != {expected}")
        }
        _ => assert_eq!(actual, expected, "{what}"),
    }
}
