//! The protocol client module (`/static/netfly-client.js`) on its own, in
//! the page, against a scripted socket: resume after a drop (PROTOCOL.md
//! §3.2–3.3) with replayed frames ignored, `resume_unavailable`, no session
//! (interrupted), cancel while disconnected, resume of an earlier page's
//! chat, and the status events. (The real gateway's resume arrives in
//! phase 2; these checks pin the client's side of the contract now.)

use serde_json::json;

use super::*;
use crate::support::Reply;

/// The scripted socket and helpers, prepended to each check.
const HARNESS: &str = "
    const { NetflyClient, ChatPhase } = await import('/static/netfly-client.js');
    class FakeSocket {
      constructor(url) { this.url = url; this.readyState = 0; this.sent = []; this.l = {}; FakeSocket.all.push(this); }
      addEventListener(t, f) { (this.l[t] = this.l[t] || []).push(f); }
      send(s) { this.sent.push(JSON.parse(s)); }
      close() { this.drop(); }
      open(hello) { this.readyState = 1; this.push(hello); }
      push(frame) { for (const f of this.l.message || []) f({ data: JSON.stringify(frame) }); }
      drop() { if (this.readyState === 3) return; this.readyState = 3; for (const f of this.l.close || []) f({}); }
    }
    FakeSocket.all = [];
    const tick = (ms) => new Promise((r) => setTimeout(r, ms));
    const socket = async (n) => { for (let i = 0; i < 400 && FakeSocket.all.length < n; i++) await tick(5); return FakeSocket.all[n - 1]; };
    const hello = (session) => ({ type: 'hello', models: ['m'], default_model: 'm', max_streams: 4, ...(session ? { session } : {}) });
    const client = () => new NetflyClient({ url: 'ws://fake.invalid/ws', WebSocket: FakeSocket, reconnectBaseMs: 5, reconnectMaxMs: 10 });
    const record = (chat) => { const got = [];
      for (const t of ['start', 'reasoning', 'delta', 'retry', 'done', 'error', 'paused', 'resuming', 'interrupted'])
        chat.on(t, (f) => got.push(t === 'delta' || t === 'reasoning' ? t + ':' + f.content : t === 'error' ? 'error:' + f.code : t));
      return got; };
";

/// Runs `body` after [`HARNESS`] in the page and returns its result.
async fn check(browser: &Browser, body: &str) -> serde_json::Value {
    browser.eval_async(&format!("{HARNESS}\n{body}")).await
}

/// Resume after a drop: the chat pauses, the next hello triggers
/// `resume` with the old session and the last seq, replayed frames are
/// dropped, the text continues exactly, nothing follows the terminal
/// frame; and the status events say so.
#[actix_web::test]
async fn client_resumes_after_a_drop() {
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse_words(&["unused"])], &[], (1024, 768), "").await;
    let r = check(
        &browser,
        "const c = client(); const statuses = []; c.on('status', (s) => { if (statuses[statuses.length - 1] !== s.state) statuses.push(s.state); });
         let threw = false; try { c.chat({ messages: [] }); } catch (_) { threw = true; }
         c.connect(); let ws = await socket(1); ws.open(hello('S1'));
         const chat = c.chat({ messages: [{ role: 'user', content: 'hi' }], model: 'm', params: {} });
         const first = ws.sent[0]; const got = record(chat);
         ws.push({ type: 'start', id: chat.id, seq: 1, model: 'm', upstream: 'u', attempt: 1 });
         ws.push({ type: 'reasoning', id: chat.id, seq: 2, content: 'hm' });
         ws.push({ type: 'delta', id: chat.id, seq: 3, content: 'Hel' });
         ws.push({ type: 'delta', id: 'someone-else', seq: 4, content: 'NO' });
         ws.drop(); const phaseWhileDown = chat.phase;
         ws = await socket(2); ws.open(hello('S2'));
         const resume = ws.sent[0];
         ws.push({ type: 'delta', id: chat.id, seq: 2, content: 'DUP' });
         ws.push({ type: 'delta', id: chat.id, seq: 3, content: 'DUP' });
         ws.push({ type: 'delta', id: chat.id, seq: 4, content: 'lo' });
         ws.push({ type: 'delta', id: chat.id, seq: 5, content: ' world' });
         ws.push({ type: 'done', id: chat.id, seq: 6, finish_reason: 'stop', usage: null });
         ws.push({ type: 'delta', id: chat.id, seq: 7, content: 'LATE' });
         const r = { threw, first, got, resume, phaseWhileDown, phase: chat.phase, lastSeq: chat.lastSeq, session: c.session,
                     inFlight: c.chats.size, statuses };
         c.close(); return r;",
    )
    .await;
    assert_eq!(r["threw"], true, "chat() before hello throws");
    assert_eq!(r["first"]["type"], "chat");
    assert_eq!(
        r["first"]["messages"],
        json!([{ "role": "user", "content": "hi" }])
    );
    assert!(
        r["first"].get("params").is_none(),
        "empty params are left out: {}",
        r["first"]
    );
    let id = r["first"]["id"].as_str().expect("chat id").to_string();
    assert!(
        !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic()),
        "chat id {id:?}"
    );
    assert_eq!(
        r["got"],
        json!([
            "start",
            "reasoning:hm",
            "delta:Hel",
            "paused",
            "resuming",
            "delta:lo",
            "delta: world",
            "done"
        ]),
        "each frame exactly once, in order, nothing after done"
    );
    assert_eq!(
        r["resume"],
        json!({ "type": "resume", "session": "S1", "id": id, "after": 3 }),
        "resume names the chat's own session and the last seq delivered"
    );
    assert_eq!(r["phaseWhileDown"], "paused");
    assert_eq!(r["phase"], "ended");
    assert_eq!(r["lastSeq"], 6);
    assert_eq!(
        r["session"], "S2",
        "the client's session follows the latest hello"
    );
    assert_eq!(r["inFlight"], 0);
    assert_eq!(
        r["statuses"],
        json!(["connecting", "connected", "reconnecting", "connected"]),
        "status events"
    );
    browser.close_with(gateway).await;
}

/// The other endings: `resume_unavailable` ends the chat with that error;
/// without a session the chat is interrupted at the drop; cancel while
/// down is sent right after the resume; an earlier page's chat resumes
/// from its saved seq; an error with `id: null` is a client event.
#[actix_web::test]
async fn client_ends_chats_it_cannot_resume() {
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse_words(&["unused"])], &[], (1024, 768), "").await;
    let r = check(
        &browser,
        "const out = {};
         { const c = client(); c.connect(); let ws = await socket(1); ws.open(hello('S1'));
           const chat = c.chat({ messages: [] }); const got = record(chat);
           ws.push({ type: 'delta', id: chat.id, seq: 1, content: 'a' }); ws.drop();
           ws = await socket(2); ws.open(hello('S2'));
           ws.push({ type: 'error', id: chat.id, code: 'resume_unavailable', message: 'gone', retryable: false });
           ws.push({ type: 'delta', id: chat.id, seq: 2, content: 'LATE' });
           out.unavailable = { got, phase: chat.phase }; c.close(); }
         FakeSocket.all = [];
         { const c = client(); c.connect(); let ws = await socket(1); ws.open(hello(null));
           const chat = c.chat({ messages: [] }); const got = record(chat);
           ws.push({ type: 'delta', id: chat.id, content: 'x' }); ws.drop();
           ws = await socket(2); ws.open(hello(null));
           out.noSession = { got, phase: chat.phase, sent: ws.sent }; c.close(); }
         FakeSocket.all = [];
         { const c = client(); c.connect(); let ws = await socket(1); ws.open(hello('S1'));
           const chat = c.chat({ messages: [] }); const got = record(chat);
           ws.push({ type: 'delta', id: chat.id, seq: 1, content: 'a' }); ws.drop(); chat.cancel();
           ws = await socket(2); ws.open(hello('S3'));
           out.cancelWhileDown = { got, sent: ws.sent.map((f) => f.type + ':' + (f.after ?? '')) }; c.close(); }
         FakeSocket.all = [];
         { const c = client(); const chat = c.resume({ session: 'OLD', id: 'c-old-1', after: 7 }); const got = record(chat);
           c.connect(); const ws = await socket(1); ws.open(hello('NEW'));
           ws.push({ type: 'delta', id: 'c-old-1', seq: 7, content: 'DUP' });
           ws.push({ type: 'delta', id: 'c-old-1', seq: 8, content: 'more' });
           const notices = []; c.on('error', (f) => notices.push(f.code));
           ws.push({ type: 'error', id: null, code: 'bad_request', message: 'x', retryable: false });
           out.reloaded = { got, sent: ws.sent, lastSeq: chat.lastSeq, notices }; c.close(); }
         FakeSocket.all = [];
         { const c = client(); const chat = c.resume({ session: null, id: 'c-old-2', after: 3 }); const got = record(chat);
           await tick(0); out.reloadedNoSession = { got, phase: chat.phase }; }
         return out;",
    )
    .await;
    assert_eq!(
        r["unavailable"],
        json!({ "got": ["delta:a", "paused", "resuming", "error:resume_unavailable"], "phase": "ended" }),
        "resume_unavailable ends the chat with that error"
    );
    assert_eq!(
        r["noSession"],
        json!({ "got": ["delta:x", "interrupted"], "phase": "ended", "sent": [] }),
        "without a session the chat is interrupted at the drop, and no resume is sent"
    );
    assert_eq!(
        r["cancelWhileDown"]["sent"],
        json!(["resume:1", "cancel:"]),
        "a cancel while down follows the resume"
    );
    assert_eq!(
        r["reloaded"]["sent"],
        json!([{ "type": "resume", "session": "OLD", "id": "c-old-1", "after": 7 }]),
        "an earlier page's chat resumes from its saved seq"
    );
    assert_eq!(r["reloaded"]["got"], json!(["resuming", "delta:more"]));
    assert_eq!(r["reloaded"]["lastSeq"], 8);
    assert_eq!(r["reloaded"]["notices"], json!(["bad_request"]));
    assert_eq!(
        r["reloadedNoSession"],
        json!({ "got": ["interrupted"], "phase": "ended" }),
        "a saved chat without a session cannot resume"
    );
    browser.close_with(gateway).await;
}
