//! The conversation in the browser's storage (a reload brings it back, New
//! chat forgets it, a second tab has its own), and images: attached by
//! picker, paste and drop, refused by type, size and frame limits, sent as
//! content parts, kept across a reload.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::support::Reply;

/// This tab's saved conversation, as the page stored it (null when none).
const SAVED: &str = "JSON.parse(localStorage.getItem('netfly.conversation.v1.' + sessionStorage.getItem('netfly.conversation-id')))";

/// A finished conversation survives a reload exactly (text, Markdown,
/// state, settings) and goes on from there; New chat forgets it.
#[actix_web::test]
async fn conversation_survives_a_reload() {
    let script = vec![
        stream_text(MARKDOWN_ANSWER, 30, Duration::from_millis(2)),
        Reply::sse_words(&["Still", " here", "."]),
    ];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1280, 860), "").await;
    browser.set_system_prompt("Be brief.").await;
    browser
        .send_message("Plan it, with <b>tags</b> & ünïcode")
        .await;
    browser.wait_state("done", WAIT).await;
    let saved = browser.eval(SAVED).await;
    assert_eq!(
        saved["turns"][1]["content"], MARKDOWN_ANSWER,
        "the answer is saved exactly"
    );

    browser.client.refresh().await.expect("reload the page");
    browser.wait_connected().await;
    let turns = browser
        .eval("Array.from(document.querySelectorAll('#messages li.turn')).map(li => [li.dataset.role, li.dataset.state || null])")
        .await;
    assert_eq!(
        turns,
        json!([["user", null], ["assistant", "done"]]),
        "both turns are back"
    );
    assert_eq!(
        browser
            .eval_text("document.querySelector('#messages li.turn.user .user-text').textContent")
            .await,
        "Plan it, with <b>tags</b> & ünïcode",
        "the question is back, as text"
    );
    assert_eq!(
        browser
            .eval(&format!(
                "{LAST}.querySelector('pre.code code').textContent"
            ))
            .await,
        MARKDOWN_CODE,
        "the answer is rendered again"
    );
    assert_eq!(
        browser.answer_source().await,
        MARKDOWN_ANSWER,
        "the answer is back exactly"
    );
    assert_eq!(
        browser
            .eval_text("document.getElementById('system-prompt').value")
            .await,
        "Be brief.",
        "the settings are back"
    );

    browser.send_message("Still there?").await;
    browser.expect_answer("Still here.").await;
    assert_eq!(
        fake.request(1).json()["messages"],
        json!([
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": "Plan it, with <b>tags</b> & ünïcode" },
            { "role": "assistant", "content": MARKDOWN_ANSWER },
            { "role": "user", "content": "Still there?" },
        ]),
        "the restored conversation is the history of the next turn"
    );

    browser.click("#new-chat").await;
    assert_eq!(
        browser.eval(SAVED).await,
        json!(null),
        "New chat clears the storage"
    );
    browser.client.refresh().await.expect("reload the page");
    browser.wait_connected().await;
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#messages li').length")
            .await,
        json!(0),
        "nothing comes back after New chat"
    );
    browser.expect_no_console_errors("after the reloads").await;
    browser.close_with(gateway).await;
}

/// A reload mid-answer when the gateway keeps no resumable chats
/// (`--resume-window-ms 0`): the text received so far comes back, and the
/// turn says calmly that it could not be resumed and offers Retry.
#[actix_web::test]
async fn reload_mid_answer_without_resume() {
    let script = vec![long_stalled_answer(|i| format!("w{i} "))];
    let args = ["--resume-window-ms", "0"];
    let (_turn, fake, gateway, browser) = open_page(script, &args, (1024, 768), "").await;
    browser.send_message("Tell me a long story").await;
    browser
        .wait_answer_includes("the story to begin", "w5 ")
        .await;
    browser.client.refresh().await.expect("reload the page");
    browser.wait_connected().await;
    browser.wait_state("interrupted", WAIT).await;
    let text = browser.answer_text().await;
    assert!(
        text.starts_with("w0 w1 w2 w3 w4 w5"),
        "the text so far is back: {text:?}"
    );
    let note = browser
        .eval_text(&format!("{LAST}.querySelector('.turn-note').textContent"))
        .await;
    assert_eq!(note, "connection lost — this answer could not be resumed");
    let shown = browser.shown_error().await;
    assert_eq!(shown["visible"], false, "no error box: {shown}");
    assert_eq!(shown["retry"], true, "Retry is offered");
    assert_eq!(browser.send_button().await, "Send");
    assert!(
        fake.wait_client_disconnect(WAIT).await,
        "the old socket's chat was cancelled"
    );
    browser.close_with(gateway).await;
}

/// Builds a File in the page: `name`, `type`, `size` bytes (a real PNG
/// when the type is image/png and size is 0).
fn make_file(name: &str, mime: &str, size: usize) -> String {
    format!(
        "(() => {{ const png = Uint8Array.from(atob('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=='), c => c.charCodeAt(0)); \
         const bytes = {size} === 0 ? png : new Uint8Array({size}); return new File([bytes], '{name}', {{ type: '{mime}' }}); }})()"
    )
}

/// Images attach through the file picker, paste and drop, show as
/// thumbnails and can be removed; a wrong type, an image over the limit,
/// and a message over the gateway's frame limit are refused with a clear
/// error (and nothing is sent).
#[actix_web::test]
async fn images_attach_and_limits() {
    let (_turn, fake, gateway, browser) =
        open_page(vec![Reply::sse_words(&["unused"])], &[], (1024, 768), "").await;

    // The file picker, with a real file.
    let dir = fresh_dir("netfly-attach");
    let png = dir.join("picked.png");
    std::fs::write(
        &png,
        [
            0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, 0x49, 0x48, 0x44, 0x52,
            0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1f, 0x15, 0xc4, 0x89, 0, 0, 0, 0x0d, 0x49,
            0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0xf8, 0xcf, 0x50, 0x0f, 0, 0x03, 0x86, 0x01,
            0x80, 0x5a, 0x34, 0x7d, 0x6b, 0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60,
            0x82,
        ],
    )
    .expect("write a PNG");
    browser
        .client
        .find(Locator::Id("file-input"))
        .await
        .expect("file input")
        .send_keys(&png.display().to_string())
        .await
        .expect("choose a file");
    browser
        .wait_js(
            "the picked image",
            "document.querySelectorAll('#attachments img').length === 1",
            WAIT,
        )
        .await;

    // Paste and drop.
    browser
        .eval(&format!(
            "(() => {{ const dt = new DataTransfer(); dt.items.add({}); \
             document.getElementById('prompt').dispatchEvent(new ClipboardEvent('paste', {{ clipboardData: dt, bubbles: true, cancelable: true }})); return true; }})()",
            make_file("pasted.png", "image/png", 0)
        ))
        .await;
    browser
        .eval(&format!(
            "(() => {{ const dt = new DataTransfer(); dt.items.add({}); \
             document.getElementById('messages').dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }})); return true; }})()",
            make_file("dropped.gif", "image/gif", 64)
        ))
        .await;
    let thumbs = browser
        .wait_js(
            "three thumbnails",
            "(() => { const t = Array.from(document.querySelectorAll('#attachments img')); \
             return t.length === 3 && t.map(i => [i.alt, i.src.slice(0, 22)]); })()",
            WAIT,
        )
        .await;
    assert_eq!(
        thumbs,
        json!([
            ["picked.png", "data:image/png;base64,"],
            ["pasted.png", "data:image/png;base64,"],
            ["dropped.gif", "data:image/gif;base64,"],
        ]),
        "thumbnails of the picked, pasted and dropped images"
    );
    browser
        .click("#attachments li:nth-child(2) button.remove")
        .await;
    assert_eq!(
        browser
            .eval("Array.from(document.querySelectorAll('#attachments img')).map(i => i.alt)")
            .await,
        json!(["picked.png", "dropped.gif"]),
        "Remove takes one image away"
    );
    assert_eq!(
        browser.focused().await,
        "button.ghost.small.remove \"×\"",
        "the focus moves to the next Remove button"
    );

    // Refused: another type, over the per-image limit (hello's
    // max_image_bytes bounds the data URL: 1 MiB, a 768 KB file).
    browser
        .eval(&format!(
            "(() => {{ const dt = new DataTransfer(); dt.items.add({}); dt.items.add({}); \
             document.body.dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }})); return true; }})()",
            make_file("notes.txt", "text/plain", 10),
            make_file("huge.png", "image/png", 1536 * 1024)
        ))
        .await;
    let error = browser
        .wait_js(
            "the attach error",
            "(() => { const e = document.getElementById('attach-error'); return !e.hidden && e.textContent; })()",
            WAIT,
        )
        .await;
    assert_eq!(
        error,
        "notes.txt: only PNG, JPEG, GIF and WebP images can be attached. \
         huge.png is too large (1.5 MB); an image can be at most 768 KB.",
        "a clear error for each refused file"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#attachments img').length")
            .await,
        2,
        "refused files are not attached"
    );

    // Each under the image limit, together over the frame limit.
    browser.click("#new-chat").await;
    browser
        .eval(&format!(
            "(() => {{ const dt = new DataTransfer(); dt.items.add({}); dt.items.add({}); \
             document.body.dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }})); return true; }})()",
            make_file("big1.jpg", "image/jpeg", 600 * 1024),
            make_file("big2.jpg", "image/jpeg", 600 * 1024)
        ))
        .await;
    browser
        .wait_js(
            "the big images",
            "document.querySelectorAll('#attachments img').length === 2",
            WAIT,
        )
        .await;
    browser.type_message("What is in it?").await;
    browser.press_enter().await;
    let error = browser
        .wait_js(
            "the frame-size error",
            "(() => { const e = document.getElementById('composer-error'); return !e.hidden && e.textContent; })()",
            WAIT,
        )
        .await;
    assert!(
        has_text(&error, "too large to send") && has_text(&error, "at most 1 MB"),
        "a clear error: {error}"
    );
    assert_eq!(browser.turn_count().await, 0, "nothing was sent");
    assert_eq!(
        browser
            .eval_text("document.getElementById('prompt').value")
            .await,
        "What is in it?",
        "the message stays in the box"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fake.requests().len(), 0, "nothing reached the upstream");
    let _ = std::fs::remove_dir_all(&dir);
    browser.expect_no_console_errors("after attaching").await;
    browser.close_with(gateway).await;
}

/// The 1×1 PNG of [`make_file`] (size 0), as its data URL.
const DOT_PNG_URL: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// An attached image goes up as an `image_url` content part (its data URL)
/// next to the text part, shows as a thumbnail in the transcript, survives
/// a reload, and is sent again with the history of the next turn.
#[actix_web::test]
async fn image_goes_up_as_a_content_part() {
    let script = vec![
        Reply::sse_words(&["A", " dot", "."]),
        Reply::sse_words(&["Still", " a", " dot", "."]),
    ];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1024, 768), "").await;
    browser
        .eval(&format!(
            "(() => {{ const dt = new DataTransfer(); dt.items.add({}); \
             document.body.dispatchEvent(new DragEvent('drop', {{ dataTransfer: dt, bubbles: true, cancelable: true }})); return true; }})()",
            make_file("dot.png", "image/png", 0)
        ))
        .await;
    browser
        .wait_js(
            "the thumbnail",
            "document.querySelectorAll('#attachments img').length === 1",
            WAIT,
        )
        .await;
    browser.send_message("What is in it?").await;
    browser.expect_answer("A dot.").await;
    let question = json!({
        "role": "user",
        "content": [
            { "type": "text", "text": "What is in it?" },
            { "type": "image_url", "image_url": { "url": DOT_PNG_URL } },
        ]
    });
    assert_eq!(
        fake.request(0).json()["messages"],
        json!([question]),
        "the image goes up as a content part, its data URL exactly"
    );
    let shown = browser
        .eval("Array.from(document.querySelectorAll('#messages li.turn.user img.thumb')).map(i => [i.alt, i.src])")
        .await;
    assert_eq!(
        shown,
        json!([["Attached image: dot.png", DOT_PNG_URL]]),
        "a thumbnail in the transcript"
    );
    assert_eq!(
        browser
            .eval("document.querySelectorAll('#attachments img').length")
            .await,
        0,
        "the composer's attachments were taken"
    );

    browser.client.refresh().await.expect("reload the page");
    browser.wait_connected().await;
    assert_eq!(
        browser
            .eval("Array.from(document.querySelectorAll('#messages li.turn.user img.thumb')).map(i => i.src)")
            .await,
        json!([DOT_PNG_URL]),
        "the image is back after a reload"
    );
    browser.send_message("And now?").await;
    browser.expect_answer("Still a dot.").await;
    assert_eq!(
        fake.request(1).json()["messages"],
        json!([
            question,
            { "role": "assistant", "content": "A dot." },
            { "role": "user", "content": "And now?" },
        ]),
        "the history carries the image again"
    );
    browser
        .expect_no_console_errors("after sending an image")
        .await;
    browser.close_with(gateway).await;
}
