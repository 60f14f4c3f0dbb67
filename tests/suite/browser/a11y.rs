//! Accessibility: axe-core in every state a user meets, at three viewports
//! (desktop light, desktop dark, phone 390×844), and one whole chat driven
//! by the keyboard alone.

use std::time::Duration;

use fantoccini::key::Key;
use serde_json::json;

use super::markdown::axe_views;
use super::*;
use crate::support::{flags, Reply};

/// A 1×1 PNG, attached through a drop event (as a user drags a file in).
const DROP_PNG: &str = "(() => { \
    const b64 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='; \
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0)); \
    const dt = new DataTransfer(); \
    dt.items.add(new File([bytes], 'dot.png', { type: 'image/png' })); \
    document.getElementById('prompt').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true })); \
    return true; })()";

/// axe-core finds no serious or critical violation in any state (idle,
/// image attached, streaming, a finished Markdown answer with code and a
/// table, an error shown, reconnecting) at any viewport.
#[actix_web::test]
async fn axe_finds_no_serious_violations() {
    let streaming = MARKDOWN_ANSWER.chars().take(420).collect::<String>();
    let script = vec![
        stream_text_then_stall(&streaming, 12, Duration::from_millis(10)),
        stream_text(MARKDOWN_ANSWER, 40, Duration::from_millis(5)),
        Reply::error_json(400, "This model's maximum context length is 8192 tokens"),
    ];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1280, 860), "").await;

    axe_views(&browser, "idle").await;

    browser.eval(DROP_PNG).await;
    browser
        .wait_js(
            "the dropped image's thumbnail",
            "document.querySelectorAll('#attachments img').length === 1",
            WAIT,
        )
        .await;
    axe_views(&browser, "image attached").await;
    browser.click("#attachments button.remove").await;
    assert_eq!(
        browser.focused().await,
        "#prompt",
        "removing the last image gives the focus to the message box"
    );

    browser.send_message("Plan it").await;
    browser
        .wait_js(
            "the streamed table",
            &format!("{LAST}.querySelector('table') && {LAST}.dataset.state === 'streaming'"),
            WAIT,
        )
        .await;
    axe_views(&browser, "streaming").await;
    assert_eq!(browser.answer_state().await, "streaming");
    browser.press(&[char::from(Key::Escape)]).await;
    browser.wait_state("stopped", WAIT).await;
    assert!(
        fake.wait_client_disconnect(WAIT).await,
        "Escape cancelled the chat"
    );

    browser.send_message("Plan it again").await;
    browser.wait_state("done", WAIT).await;
    browser
        .wait_js(
            "the finished answer's code and table",
            &format!("{LAST}.querySelector('pre.code') && {LAST}.querySelector('table')"),
            WAIT,
        )
        .await;
    axe_views(&browser, "finished Markdown answer").await;

    browser.send_message("A very long question").await;
    browser.wait_state("error", WAIT).await;
    axe_views(&browser, "error shown").await;
    browser.expect_no_console_errors("in the checks").await;

    gateway.stop(false).await;
    browser
        .wait_js(
            "the reconnecting status",
            "['reconnecting', 'offline'].includes(document.getElementById('status').dataset.state)",
            WAIT,
        )
        .await;
    axe_views(&browser, "reconnecting").await;
    browser.close().await;
}

/// One whole chat with the keyboard alone (WebDriver key actions only):
/// the order of the controls, Enter to send, Escape to stop, Tab to the
/// answer's Copy and the code's Copy, Retry after an error, New chat; the
/// focus stays somewhere sensible (and visible) all along.
#[actix_web::test]
async fn keyboard_only_chat() {
    let script = vec![
        long_stalled_answer(|i| format!("word{i} ")),
        stream_text(MARKDOWN_ANSWER, 40, Duration::from_millis(5)),
        Reply::error_json(503, "the model is overloaded"),
        Reply::sse_words(&["Back", " again", "."]),
    ];
    let args = flags("--max-attempts 1");
    let (_turn, fake, gateway, browser) = open_page(script, &args, (1024, 768), "").await;

    assert_eq!(
        browser.focused().await,
        "#prompt",
        "the message box has the focus on load"
    );

    // The controls, backwards from the message box, then the skip link.
    let mut order = Vec::new();
    for _ in 0..8 {
        browser.press_shifted(Key::Tab).await;
        let f = browser.focused().await;
        let at_start = f.starts_with("a.skip-link");
        order.push(f);
        if at_start {
            break;
        }
    }
    assert_eq!(
        order,
        [
            "#attach",
            "summary. \"System prompt & settings\"",
            "#new-chat",
            "#model",
            "a.skip-link \"Skip to message box\"",
        ],
        "keyboard order before the message box"
    );
    browser.press(&[char::from(Key::Enter)]).await;
    assert_eq!(
        browser.focused().await,
        "#prompt",
        "the skip link goes to the message box"
    );
    browser.press(&[char::from(Key::Tab)]).await;
    assert_eq!(
        browser.focused().await,
        "#send",
        "Send follows the message box"
    );
    browser.press_shifted(Key::Tab).await;

    // Type, Enter; Escape stops the answer; the focus stays in the box.
    browser.type_keys("Count slowly").await;
    browser.press(&[char::from(Key::Enter)]).await;
    browser
        .wait_answer_includes("the answer to stream", "word3 ")
        .await;
    assert_eq!(browser.focused().await, "#prompt");
    browser.press(&[char::from(Key::Escape)]).await;
    browser.wait_state("stopped", WAIT).await;
    assert!(
        fake.wait_client_disconnect(WAIT).await,
        "Escape cancelled the chat"
    );
    assert_eq!(browser.focused().await, "#prompt", "focus after Escape");

    // A Markdown answer runs to its end: the focus stays where it was.
    browser.type_keys("Plan it").await;
    browser.press(&[char::from(Key::Enter)]).await;
    browser.wait_state("done", WAIT).await;
    assert_eq!(
        browser.focused().await,
        "#prompt",
        "focus after the answer ended"
    );

    // Back to the answer's Copy, then the code block's Copy.
    browser.record_clipboard().await;
    browser.press_shifted(Key::Tab).await;
    assert_eq!(browser.focused().await, "#attach");
    browser.press_shifted(Key::Tab).await;
    assert_eq!(browser.focused().await, "button.ghost.small.copy \"Copy\"");
    let outline = browser
        .eval("getComputedStyle(document.activeElement).outlineStyle")
        .await;
    assert_ne!(outline, "none", "the focused button shows its focus");
    browser.press(&[char::from(Key::Enter)]).await;
    let copied = browser
        .wait_js("the answer to be copied", "window.__copied", WAIT)
        .await;
    assert_eq!(
        copied, MARKDOWN_ANSWER,
        "Copy copies the answer's Markdown exactly"
    );
    browser.record_clipboard().await;
    let mut back = Vec::new();
    for _ in 0..3 {
        browser.press_shifted(Key::Tab).await;
        back.push(browser.focused().await);
    }
    assert_eq!(
        back,
        [
            "a. \"https://example.org/path\"",
            "a. \"safe link\"",
            "button.ghost.small.copy-code \"Copy\"",
        ],
        "backwards through the answer: its links, then the code's Copy"
    );
    browser.press(&[char::from(Key::Space)]).await;
    let copied = browser
        .wait_js("the code to be copied", "window.__copied", WAIT)
        .await;
    assert_eq!(
        copied, MARKDOWN_CODE,
        "the code's Copy copies the code exactly"
    );
    assert_eq!(
        browser.focused().await,
        "button.ghost.small.copy-code \"Copied\"",
        "the copy button keeps the focus"
    );

    // Back to the box; an error offers Retry, reached with Shift+Tab.
    for _ in 0..6 {
        browser.press(&[char::from(Key::Tab)]).await;
        if browser.focused().await == "#prompt" {
            break;
        }
    }
    assert_eq!(browser.focused().await, "#prompt");
    browser.type_keys("Fail, then work").await;
    browser.press(&[char::from(Key::Enter)]).await;
    browser.wait_state("error", WAIT).await;
    assert_eq!(browser.focused().await, "#prompt", "focus after an error");
    browser.press_shifted(Key::Tab).await;
    browser.press_shifted(Key::Tab).await;
    assert_eq!(browser.focused().await, "button.small.retry \"Retry\"");
    browser.press(&[char::from(Key::Enter)]).await;
    browser.expect_answer("Back again.").await;
    assert_eq!(
        browser.focused().await,
        "#prompt",
        "Retry hands the focus to the message box"
    );

    // New chat, reached backwards.
    let mut reached = false;
    for _ in 0..30 {
        browser.press_shifted(Key::Tab).await;
        if browser.focused().await == "#new-chat" {
            reached = true;
            break;
        }
    }
    assert!(reached, "New chat is reachable with the keyboard");
    browser.press(&[char::from(Key::Enter)]).await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#messages li').length")
            .await,
        json!(0),
        "New chat empties the conversation"
    );
    assert_eq!(browser.focused().await, "#prompt", "focus after New chat");
    browser
        .expect_no_console_errors("after the keyboard chat")
        .await;
    browser.close_with(gateway).await;
}
