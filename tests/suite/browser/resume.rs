//! Answers that survive dropped connections (PROTOCOL.md §3.3, issue 11):
//! the page's connection cut mid-answer (a TCP relay the test severs), and
//! the page reloaded mid-answer; both times the answer completes exactly,
//! calmly, without asking the upstream again.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::support::Reply;

/// 120 numbered words, 40 ms apart (about 5 s): long enough to cut into.
fn counted(n: usize) -> (Reply, String) {
    let words: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let text = words.concat();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    (
        Reply::sse_words_slow(&refs, Duration::from_millis(40)),
        text,
    )
}

/// The page's connection is cut twice mid-answer: each time the turn says
/// calmly that the answer will continue (no error box), the page
/// reconnects and resumes, and the answer ends exactly the upstream's
/// text, from one upstream request that never saw a disconnect.
#[actix_web::test]
async fn answer_survives_a_cut_connection() {
    let (reply, text) = counted(120);
    let turn = BROWSER_TURN.lock().await;
    let fake = FakeUpstream::start(vec![reply]);
    let gateway = gateway_on("127.0.0.1:0", &fake, &[]).await;
    let relay = Relay::start(gateway.addr).await;
    let browser = Browser::launch(1024, 768).await;
    browser.goto(&format!("http://{}/", relay.addr)).await;
    browser.wait_connected().await;
    browser.eval(RECORD_ANNOUNCEMENTS).await;

    browser.send_message("Count to 120").await;
    for cut_after in ["w10 ", "w50 "] {
        browser
            .wait_answer_includes(&format!("the answer to reach {cut_after}"), cut_after)
            .await;
        assert!(relay.sever() > 0, "the relay carried the page's connection");
        let note = browser
            .wait_js(
                "the calm note",
                &format!(
                    "(() => {{ const n = {LAST}.querySelector('.turn-note'); return !n.hidden && n.textContent; }})()"
                ),
                WAIT,
            )
            .await;
        assert_eq!(
            note, "connection lost — the answer will continue when it is back",
            "the turn says calmly what happens"
        );
        assert_eq!(
            browser.shown_error().await["visible"],
            false,
            "no error box"
        );
        assert_eq!(browser.answer_state().await, "streaming");
        assert_eq!(
            browser.send_button().await,
            "Stop",
            "the answer can still be stopped"
        );
        browser
            .wait_js(
                "the page to reconnect and the note to go",
                &format!(
                    "document.getElementById('status').dataset.state === 'connected' && {LAST}.querySelector('.turn-note').hidden"
                ),
                WAIT,
            )
            .await;
    }
    browser.wait_state("done", WAIT).await;
    assert_eq!(
        browser.answer_source().await,
        text,
        "the answer is exactly the upstream's text"
    );
    assert_eq!(
        browser.answer_text().await,
        text.trim_end(),
        "and shown without repeats or gaps"
    );
    assert_eq!(browser.shown_error().await["visible"], false);
    assert_eq!(fake.requests().len(), 1, "the upstream was asked once");
    assert_eq!(
        fake.disconnects(),
        0,
        "the upstream request was never dropped"
    );
    let announced = browser.eval("window.__announced").await;
    assert_eq!(
        announced,
        json!([
            "Connection lost. Reconnecting; the answer will continue.",
            "Reconnected. The answer continues.",
            "Connection lost. Reconnecting; the answer will continue.",
            "Reconnected. The answer continues.",
            "Answer complete.",
        ]),
        "each status change announced once"
    );
    browser.expect_no_console_errors_but_reconnects().await;
    browser.close_with(gateway).await;
    drop(relay);
    drop(turn);
}

/// A reload mid-answer: the conversation comes back and the answer
/// resumes from where the page had rendered it, ending exactly.
#[actix_web::test]
async fn reload_mid_answer_resumes_exactly() {
    let (reply, text) = counted(120);
    let (_turn, fake, gateway, browser) = open_page(vec![reply], &[], (1024, 768), "").await;
    browser.send_message("Count to 120").await;
    browser
        .wait_answer_includes("the answer to begin", "w20 ")
        .await;
    browser.client.refresh().await.expect("reload the page");
    browser.wait_connected().await;
    assert_eq!(
        browser
            .eval("Array.from(document.querySelectorAll('#messages li.turn')).map(li => li.dataset.role)")
            .await,
        json!(["user", "assistant"]),
        "the conversation is back"
    );
    browser.wait_state("done", WAIT).await;
    assert_eq!(
        browser.answer_source().await,
        text,
        "the answer is exactly the upstream's text"
    );
    assert_eq!(browser.answer_text().await, text.trim_end());
    assert_eq!(
        browser.shown_error().await["visible"],
        false,
        "no error box"
    );
    assert_eq!(fake.requests().len(), 1, "the upstream was asked once");
    assert_eq!(
        fake.disconnects(),
        0,
        "the upstream request was never dropped"
    );
    browser.close_with(gateway).await;
}
