//! The page's chat basics: a streamed answer shown exactly, Stop, errors
//! with Retry, and a reconnect after a gateway restart.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::support::{flags, Reply};

/// The first answer of the streaming test: prose, a fenced code block,
/// non-ASCII, and text that would be markup if it were rendered as HTML.
const ANSWER: &[&str] = &[
    "Sure",
    "! Here",
    " is a",
    " tiny",
    " program",
    " and a",
    " few",
    " notes",
    ".\n\n",
    "```rust\n",
    "fn main() {\n",
    "    println!(\"hello, <world>\");\n",
    "}\n",
    "```\n",
    "\nRun it",
    " with `cargo run`:",
    " it prints",
    " one line",
    " and exits.\n",
    // --- a pause here: the screenshot is taken mid-answer ---
    "\nNon-ASCII: héllo wörld — 日本語 🚀 ",
    "ça marche.\n",
    "Markup stays text: <script>window.__netflyPwned = 1</script> ",
    "<img src=x onerror=\"window.__netflyPwned = 2\"> ",
    "& <b>not bold</b> &amp; ",
    "trailing  spaces\tand a tab.",
];
const PAUSE_AFTER: usize = 18;

/// Page load, models from hello, a streamed answer rendered exactly (as
/// text), the conversation history and system prompt sent with the next
/// turn, the chosen model used, Shift+Enter for a new line.
#[actix_web::test]
async fn page_streams_an_answer_as_exact_text() {
    let first = stream_with_pause(
        ANSWER,
        Duration::from_millis(40),
        PAUSE_AFTER,
        Duration::from_millis(2500),
    );
    let script = vec![first, Reply::sse_words(&["Second", " answer", "."])];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1280, 860), "").await;

    // The model picker holds hello's models, the default selected.
    let options = browser
        .eval("Array.from(document.querySelectorAll('#model option')).map(o => o.value).join(',')")
        .await;
    assert_eq!(options, MODELS, "model picker options");
    assert_eq!(
        browser.eval("document.getElementById('model').value").await,
        "gpt-4o-mini",
        "default model selected"
    );
    assert_eq!(browser.eval("document.title").await, "netfly chat");
    browser.expect_no_console_errors("on load").await;

    // First turn: streams in; mid-answer screenshot.
    browser.send_message("Show me a tiny program").await;
    browser
        .wait_js(
            "the code block and the line after it to stream in",
            &format!(
                "{LAST}.querySelector('pre.code') && {LAST}.textContent.includes('and exits.')"
            ),
            WAIT,
        )
        .await;
    assert_eq!(browser.answer_state().await, "streaming");
    assert_eq!(
        browser
            .eval("document.getElementById('send').dataset.mode")
            .await,
        "stop",
        "the Send button is Stop while the answer streams"
    );
    // Screen readers hear the answer in pieces while it streams: the
    // finished paragraph and the code block (summarised) are announced
    // already, each as one piece, not word by word.
    let pieces = browser
        .eval("Array.from(document.querySelectorAll('#answer-live p')).map(p => p.textContent)")
        .await;
    assert_eq!(
        pieces,
        json!([
            "Sure! Here is a tiny program and a few notes.",
            "Code block in rust, 3 lines."
        ]),
        "the answer is announced in paragraph-sized pieces while it streams"
    );
    // Streaming appends: the nodes already shown stay (the finished
    // paragraph is never rendered again).
    browser
        .eval(&format!(
            "{LAST}.querySelector('.turn-body p').dataset.probe = 'kept'"
        ))
        .await;
    let shot = browser.screenshot("chat-mid-answer.png").await;
    assert!(shot.is_file());
    assert_eq!(
        browser.answer_state().await,
        "streaming",
        "the screenshot was taken mid-answer"
    );

    browser.wait_state("done", WAIT).await;
    let expected: String = ANSWER.concat();
    assert_eq!(
        browser.answer_source().await,
        expected,
        "the page holds exactly the upstream's text (Copy copies it)"
    );
    // Rendered as Markdown: each block's text exact, markup as text.
    let blocks = browser
        .eval(&format!(
            "blocks_of({LAST}.querySelector('.turn-body')).map(c => \
             [c.tagName, c.matches('.code-block') ? c.querySelector('pre.code code').textContent : c.textContent])"
        ))
        .await;
    assert_eq!(
        blocks,
        json!([
            ["P", "Sure! Here is a tiny program and a few notes."],
            ["DIV", "fn main() {\n    println!(\"hello, <world>\");\n}\n"],
            ["P", "Run it with cargo run: it prints one line and exits."],
            [
                "P",
                "Non-ASCII: héllo wörld — 日本語 🚀 ça marche.\n\
                   Markup stays text: <script>window.__netflyPwned = 1</script> \
                   <img src=x onerror=\"window.__netflyPwned = 2\"> \
                   & <b>not bold</b> &amp; trailing  spaces\tand a tab."
            ],
        ]),
        "the page shows exactly the upstream's text, as Markdown"
    );
    assert_eq!(
        browser
            .eval(&format!(
                "[{LAST}.querySelector('.code-lang').textContent, {LAST}.querySelector('p code').textContent]"
            ))
            .await,
        json!(["rust", "cargo run"]),
        "the code block's language label and the inline code"
    );
    assert_eq!(
        browser
            .eval(&format!(
                "{LAST}.querySelector('.turn-body p').dataset.probe"
            ))
            .await,
        "kept",
        "streaming re-created the text already shown"
    );
    let pieces = browser
        .eval("Array.from(document.querySelectorAll('#answer-live p')).map(p => p.textContent)")
        .await;
    let pieces: Vec<&str> = pieces
        .as_array()
        .expect("announced pieces")
        .iter()
        .map(|p| p.as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        pieces[..3],
        [
            "Sure! Here is a tiny program and a few notes.",
            "Code block in rust, 3 lines.",
            "Run it with cargo run: it prints one line and exits.",
        ],
        "one announcement per block"
    );
    assert_eq!(
        pieces[3..].join("\n"),
        "Non-ASCII: héllo wörld — 日本語 🚀 ça marche.\n\
         Markup stays text: <script>window.__netflyPwned = 1</script> \
         <img src=x onerror=\"window.__netflyPwned = 2\"> \
         & <b>not bold</b> &amp; trailing  spaces\tand a tab.",
        "the last paragraph is announced sentence by sentence, all of it"
    );
    let injected = browser
        .eval("[document.querySelectorAll('#messages script, #messages img, #messages b').length, typeof window.__netflyPwned]")
        .await;
    assert_eq!(
        injected,
        json!([0, "undefined"]),
        "model output must never become markup"
    );
    assert_eq!(
        browser
            .eval(&format!("{LAST}.querySelectorAll('pre.code code').length"))
            .await,
        1,
        "the fenced block is shown as code"
    );
    let meta = browser
        .eval(&format!("{LAST}.querySelector('.turn-meta').textContent"))
        .await;
    let meta = meta.as_str().unwrap_or_default();
    assert!(
        meta.contains("gpt-4o-mini") && meta.contains("127.0.0.1"),
        "model and upstream host in small print: {meta:?}"
    );
    assert_eq!(
        fake.request(0).json()["messages"],
        json!([{ "role": "user", "content": "Show me a tiny program" }])
    );
    assert_eq!(fake.request(0).json()["model"], "gpt-4o-mini");

    // Second turn: another model, a system prompt, a two-line message.
    browser.click("#model option[value='gpt-4o']").await;
    browser.set_system_prompt("Be brief.").await;
    browser.send_message("Thanks!\nOne more?").await;
    browser.expect_answer("Second answer.").await;
    let second = fake.request(1);
    assert_eq!(second.json()["model"], "gpt-4o");
    assert_eq!(
        second.json()["messages"],
        json!([
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Show me a tiny program" },
            { "role": "assistant", "content": expected },
            { "role": "user", "content": "Thanks!\nOne more?" },
        ]),
        "the whole conversation is sent with each turn"
    );
    browser.expect_no_console_errors("after the chats").await;

    // The same page at phone width in dark mode (an artefact to look at).
    browser
        .cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
        )
        .await;
    browser
        .cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
        )
        .await;
    let bg = browser
        .eval("getComputedStyle(document.body).backgroundColor")
        .await;
    assert_ne!(bg, "rgb(246, 247, 249)", "dark mode changes the background");
    let overflow = browser
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(overflow, true, "no horizontal overflow at phone width");
    browser.click("#settings summary").await;
    browser
        .eval("(() => { const m = document.getElementById('main'); m.scrollTop = m.scrollHeight; return true; })()")
        .await;
    browser.screenshot("chat-phone-dark.png").await;

    browser.close_with(gateway).await;
}

/// Stop sends cancel: no more text arrives, the turn is marked stopped, the
/// upstream sees its request dropped, and the next turn works. Meanwhile:
/// auto-scroll stops when the user scrolls up, and a second tab (its own
/// socket) chats independently.
#[actix_web::test]
async fn stop_cancels_the_answer() {
    let script = vec![
        long_stalled_answer(|i| format!("line {i}\n")),
        Reply::sse_words(&["other", " tab"]),
        Reply::sse_words(&["after", " stop"]),
    ];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1024, 700), "").await;
    let page = format!("http://{}/", gateway.addr);

    browser.send_message("Count for me").await;
    browser
        .wait_answer_includes("enough lines to scroll", "line 30\\n")
        .await;
    let at_bottom = browser.eval(DISTANCE_FROM_BOTTOM).await;
    assert!(
        at_bottom.as_f64().unwrap_or(f64::MAX) < 48.0,
        "auto-scroll follows the answer: {at_bottom} px from the bottom"
    );
    // The user scrolls up: the page stays there and offers a way back.
    browser
        .eval("(() => { const m = document.getElementById('main'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); return true; })()")
        .await;
    browser
        .wait_answer_includes("more lines to arrive", "line 45\\n")
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('main').scrollTop")
            .await,
        0,
        "auto-scroll must stop when the user scrolled up"
    );
    browser
        .wait_js(
            "the jump-to-latest button",
            "!document.getElementById('jump').hidden",
            WAIT,
        )
        .await;
    browser.click("#jump").await;
    let at_bottom = browser.eval(DISTANCE_FROM_BOTTOM).await;
    assert!(
        at_bottom.as_f64().unwrap_or(f64::MAX) < 48.0,
        "jump goes back to the newest text: {at_bottom}"
    );

    // A second tab has its own socket and chats while the first streams.
    let first_tab = browser.client.window().await.expect("window handle");
    let second_tab = browser.client.new_window(true).await.expect("new tab");
    browser
        .client
        .switch_to_window(second_tab.handle)
        .await
        .expect("switch to the second tab");
    browser.goto(&page).await;
    browser.wait_connected().await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#messages li').length")
            .await,
        0,
        "a second tab starts its own conversation"
    );
    browser.send_message("Hi from tab two").await;
    browser.expect_answer("other tab").await;
    browser
        .client
        .close_window()
        .await
        .expect("close the second tab");
    browser
        .client
        .switch_to_window(first_tab)
        .await
        .expect("back to the first tab");
    assert_eq!(browser.answer_state().await, "streaming");

    assert_eq!(browser.send_button().await, "Stop");
    browser.click("#send").await;
    assert_eq!(browser.answer_state().await, "stopped");
    assert!(
        fake.wait_client_disconnect(WAIT).await,
        "the upstream request was not dropped after Stop"
    );
    let frozen = browser.answer_text().await;
    let frozen_source = browser.answer_source().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        browser.answer_text().await,
        frozen,
        "text kept arriving after Stop"
    );
    assert_eq!(
        frozen,
        frozen_source.trim_end(),
        "the stopped answer shows all the text it received"
    );
    assert!(
        !frozen.contains("line 399"),
        "the whole answer arrived: {frozen:?}"
    );
    assert_eq!(browser.answer_state().await, "stopped");
    let note = browser
        .eval(&format!("{LAST}.querySelector('.turn-note').textContent"))
        .await;
    assert_eq!(note, "stopped", "the turn is marked as stopped");
    assert_eq!(browser.send_button().await, "Send");

    // The conversation goes on; the stopped text is part of the history.
    browser.send_message("And now?").await;
    browser.expect_answer("after stop").await;
    let history = fake.request(2).json()["messages"].clone();
    assert_eq!(history[1]["content"], frozen_source.as_str());
    assert_eq!(history[2]["content"], "And now?");

    browser.close_with(gateway).await;
}

/// How far the conversation is scrolled from its bottom, in px.
const DISTANCE_FROM_BOTTOM: &str = "(() => { const m = document.getElementById('main'); \
    return m.scrollHeight - m.scrollTop - m.clientHeight; })()";

/// Retries are shown unobtrusively; a retryable upstream error is shown
/// with its Retry action, which works; a rejected request is shown with the
/// upstream's message and no Retry. The page passes its `?token=` on.
#[actix_web::test]
async fn upstream_errors_are_shown() {
    let script = vec![
        // Turn 1: a 503, then an attempt that hangs until the first-byte
        // timeout (the retry note is on screen meanwhile), then an answer.
        Reply::error_json(503, "the model is overloaded"),
        Reply::StallHeaders,
        Reply::sse_words(&["Made", " it", "."]),
        // Turn 2: every attempt fails; then its Retry succeeds.
        Reply::error_json(503, "the model is overloaded"),
        Reply::error_json(503, "the model is overloaded"),
        Reply::error_json(503, "the model is overloaded"),
        Reply::sse_words(&["Back", " again", "."]),
        // Turn 3: rejected.
        Reply::error_json(400, "This model's maximum context length is 8192 tokens"),
    ];
    let args = flags("--max-attempts 3 --first-byte-timeout-ms 1500 --auth-tokens s3cret");
    let (_turn, fake, gateway, browser) =
        open_page(script, &args, (1024, 768), "?token=s3cret").await;

    browser.send_message("Anyone?").await;
    let note = browser
        .wait_js(
            "the retry note",
            &format!("(() => {{ const n = {LAST}.querySelector('.turn-note'); return !n.hidden && n.textContent; }})()"),
            WAIT,
        )
        .await;
    assert!(
        note.as_str().unwrap_or_default().contains("retrying 2"),
        "retry note: {note}"
    );
    browser.expect_answer("Made it.").await;
    assert_eq!(
        browser.hidden_in_answer(".turn-note").await,
        true,
        "the retry note goes once the answer arrives"
    );

    browser.send_message("Hello?").await;
    browser.wait_state("error", WAIT).await;
    let shown = browser.shown_error().await;
    assert_eq!(shown["visible"], true, "the error is shown: {shown}");
    assert!(
        has_text(&shown["text"], "upstream_unavailable"),
        "the error names its code: {shown}"
    );
    assert_eq!(
        shown["retry"], true,
        "a retryable error offers Retry: {shown}"
    );
    assert_eq!(fake.attempts(), 6);

    browser.click("li.turn.assistant button.retry").await;
    browser.expect_answer("Back again.").await;
    assert_eq!(
        browser.hidden_in_answer(".turn-error").await,
        true,
        "the error is gone after a successful retry"
    );
    assert_eq!(
        fake.request(6).json()["messages"],
        json!([
            { "role": "user", "content": "Anyone?" },
            { "role": "assistant", "content": "Made it." },
            { "role": "user", "content": "Hello?" },
        ]),
        "Retry asks the same question again"
    );

    browser.send_message("A very long question").await;
    browser.wait_state("error", WAIT).await;
    let shown = browser.shown_error().await;
    assert!(
        has_text(&shown["text"], "maximum context length is 8192 tokens"),
        "the upstream's message is shown: {shown}"
    );
    assert_eq!(shown["retry"], false, "no Retry for a rejected request");
    assert_eq!(browser.send_button().await, "Send");
    browser.expect_no_console_errors("after the chats").await;

    browser.close_with(gateway).await;
}

/// The gateway restarts under the page: the answer in flight ends with the
/// gateway's shutdown error (`upstream_unavailable`, with Retry), the page
/// reconnects by itself, and the next message works.
#[actix_web::test]
async fn page_reconnects_after_gateway_restart() {
    let story = long_stalled_answer(|i| format!("w{i} "));
    let script = vec![story, Reply::sse_words(&["Welcome", " back", "!"])];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1024, 768), "").await;
    let addr = gateway.addr;

    browser.send_message("Tell me a long story").await;
    browser
        .wait_answer_includes("the story to begin", "w2 ")
        .await;

    gateway.stop(false).await;
    browser.wait_state("error", WAIT).await;
    let shown = browser.shown_error().await;
    assert!(
        has_text(&shown["text"], "upstream_unavailable"),
        "the shutdown error is shown: {shown}"
    );
    assert_eq!(shown["retry"], true, "and offers Retry: {shown}");
    assert!(
        browser.answer_text().await.starts_with("w0 w1 w2"),
        "the text received is kept"
    );
    browser
        .wait_js(
            "the status indicator to leave connected",
            "['reconnecting', 'offline'].includes(document.getElementById('status').dataset.state)",
            WAIT,
        )
        .await;
    assert_eq!(
        browser.send_button().await,
        "Send",
        "the ended turn gives the composer back"
    );
    assert!(
        fake.wait_client_disconnect(WAIT).await,
        "the upstream request outlived the gateway"
    );

    // Same port, new process-equivalent: the page finds it again.
    let bind = addr.to_string();
    let deadline = Instant::now() + WAIT;
    let gateway = loop {
        let config = netfly::Config::from_args(
            [
                "--bind",
                &bind,
                "--upstream",
                &fake.url(),
                "--models",
                MODELS,
            ],
            |_: &str| None,
        )
        .expect("gateway config");
        match netfly::Gateway::start(config).await {
            Ok(g) => break g,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {bind}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("could not restart the gateway on {bind}: {e}"),
        }
    };
    browser.wait_connected().await;
    browser.send_message("Are you there?").await;
    browser.expect_answer("Welcome back!").await;
    let cut = browser
        .eval(
            "document.querySelectorAll('#messages li.turn.assistant[data-state=\"error\"]').length",
        )
        .await;
    assert_eq!(cut, 1, "the cut turn stays marked");

    browser.close_with(gateway).await;
}
