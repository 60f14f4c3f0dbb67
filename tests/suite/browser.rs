//! The demo chat page (`static/`) in a real browser: headless Chromium,
//! driven over WebDriver (chromedriver + fantoccini), loads the page from the
//! real gateway on `127.0.0.1:0`, which talks to a scripted fake upstream.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`; `scripts/install-browser.sh` installs
//! them). Without them these tests fail, saying so. `NETFLY_TEST_CHROMIUM`
//! and `NETFLY_TEST_CHROMEDRIVER` point at other binaries.
//!
//! The tests take turns (one browser at a time): two cores are shared with
//! the rest of the suite, and every wait is bounded by a deadline.
//!
//! Artefacts: `target/artifacts/chat-mid-answer.png` (the page while an
//! answer streams in) and `target/artifacts/chat-phone-dark.png`.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::fake::{chunk, done_event, event, finish_chunk};
use crate::support::{self, flags, End, FakeUpstream, Part, Reply};

/// Models the test gateways offer; the first is the default.
const MODELS: &str = "gpt-4o-mini,gpt-4o,llama-3.1-8b";
/// Bound for the page to load, connect, or reconnect.
const WAIT_PAGE: Duration = Duration::from_secs(30);
/// Bound for one step of a chat in the page.
const WAIT: Duration = Duration::from_secs(15);
/// Poll interval of every wait.
const POLL: Duration = Duration::from_millis(50);

/// The last assistant turn of the page (a JS expression).
const LAST: &str = "Array.from(document.querySelectorAll('#messages li.turn.assistant')).pop()";

/// One browser at a time, across the suite's test threads.
static BROWSER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// chromedriver + Chromium
// ---------------------------------------------------------------------------

fn binary(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.is_file(),
        "{} not found: the browser tests need Chromium and chromedriver; \
         run `scripts/install-browser.sh` (apt-get install chromium chromium-driver), \
         or set {env}",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
        .port()
}

/// A fresh, empty directory under the system temp dir.
fn fresh_dir(prefix: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A running chromedriver (in its own process group, with the Chromium it
/// starts) and the browser profile dir; both are removed on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
}

impl Driver {
    fn spawn() -> Driver {
        let chromedriver = binary("NETFLY_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let profile = fresh_dir("netfly-chromium");
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        Driver {
            child,
            port,
            profile,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT_PAGE;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromedriver exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr} within {WAIT_PAGE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Headless Chromium on a page, with the helpers the tests need.
struct Browser {
    client: Client,
    driver: Driver,
    session: String,
    http: awc::Client,
}

impl Browser {
    async fn launch(width: u32, height: u32) -> Browser {
        let chromium = binary("NETFLY_TEST_CHROMIUM", "/usr/bin/chromium");
        let mut driver = Driver::spawn();
        driver.wait_ready().await;
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-quic".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--hide-scrollbars".into(),
            format!("--user-data-dir={}", driver.profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            WAIT_PAGE,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&driver.url()),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebDriver session within {WAIT_PAGE:?}"))
        .unwrap_or_else(|e| panic!("WebDriver session with {}: {e}", chromium.display()));
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session id");
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        Browser {
            client,
            driver,
            session,
            http,
        }
    }

    async fn close(self) {
        let Browser { client, driver, .. } = self;
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        drop(driver);
    }

    /// Closes the browser, then stops the gateway it used.
    async fn close_with(self, gateway: netfly::Gateway) {
        self.close().await;
        gateway.stop(false).await;
    }

    /// A chromedriver extension command (`/session/{id}/...`), by plain HTTP.
    async fn driver_cmd(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.driver.url(), self.session);
        let mut resp = self
            .http
            .post(&url)
            .send_json(&body)
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let bytes = support::read_body(&mut resp, 16 * 1024 * 1024, &format!("POST {url}")).await;
        let value: Value = serde_json::from_slice(&bytes).expect("chromedriver answers JSON");
        assert!(resp.status().is_success(), "POST {url}: {value}");
        value["value"].clone()
    }

    /// The browser console's errors since the last call (uncaught
    /// exceptions, console.error, failed loads).
    async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .driver_cmd("se/log", json!({ "type": "browser" }))
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Asserts the console logged no error since the last check; `when`
    /// is in the failure message.
    async fn expect_no_console_errors(&self, when: &str) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "console errors {when}: {errors:#?}");
    }

    /// A Chrome DevTools Protocol command.
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.driver_cmd("goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
    }

    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// Evaluates a JS expression in the page.
    async fn eval(&self, expr: &str) -> Value {
        self.client
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("evaluate `{expr}`: {e}"))
    }

    /// Polls a JS expression until it is truthy (bounded) and returns it.
    async fn wait_js(&self, what: &str, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(expr).await;
            if truthy(&value) {
                return value;
            }
            if Instant::now() >= deadline {
                let page = self.eval(PAGE_SUMMARY).await;
                panic!("timed out after {timeout:?} waiting for {what} (`{expr}` = {value}); page: {page:#}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_connected(&self) {
        self.wait_js(
            "the status indicator to read connected",
            "document.getElementById('status').dataset.state === 'connected' && !document.getElementById('model').disabled",
            WAIT_PAGE,
        )
        .await;
    }

    /// Types `text` into the message box (Shift+Enter for its new lines).
    async fn type_message(&self, text: &str) {
        let prompt = self
            .client
            .find(Locator::Id("prompt"))
            .await
            .expect("message box");
        let newline = format!(
            "{}{}{}",
            char::from(Key::Shift),
            char::from(Key::Enter),
            char::from(Key::Null)
        );
        prompt
            .send_keys(&text.replace('\n', &newline))
            .await
            .expect("type the message");
    }

    /// Sends the message box with Enter.
    async fn press_enter(&self) {
        self.client
            .find(Locator::Id("prompt"))
            .await
            .expect("message box")
            .send_keys(&char::from(Key::Enter).to_string())
            .await
            .expect("press Enter");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Sends a message the way a person does and waits for its turn.
    async fn send_message(&self, text: &str) {
        let before = self.turn_count().await;
        self.type_message(text).await;
        self.press_enter().await;
        self.wait_js(
            "the new assistant turn",
            &format!("document.querySelectorAll('#messages li.turn.assistant').length > {before}"),
            WAIT,
        )
        .await;
    }

    async fn turn_count(&self) -> u64 {
        self.eval("document.querySelectorAll('#messages li.turn.assistant').length")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Evaluates a JS expression as text (empty when it is not a string).
    async fn eval_text(&self, expr: &str) -> String {
        let value = self.eval(expr).await;
        value.as_str().unwrap_or_default().to_string()
    }

    async fn answer_text(&self) -> String {
        self.eval_text(&format!("{LAST}.querySelector('.turn-body').textContent"))
            .await
    }

    async fn answer_state(&self) -> String {
        self.eval_text(&format!("{LAST}.dataset.state")).await
    }

    /// The label of the Send/Stop button.
    async fn send_button(&self) -> String {
        self.eval_text("document.getElementById('send').textContent")
            .await
    }

    /// The last answer's error box: whether it is visible, its text, and
    /// whether the turn offers Retry.
    async fn shown_error(&self) -> Value {
        self.eval(&format!(
            "(() => {{ const t = {LAST}; const e = t.querySelector('.turn-error'); \
             return {{ visible: !e.hidden && e.offsetHeight > 0, text: e.textContent, \
                      retry: !!t.querySelector('button.retry') }}; }})()"
        ))
        .await
    }

    /// Waits until the last answer's text includes `text` (inserted into a
    /// JS string literal as it is).
    async fn wait_answer_includes(&self, what: &str, text: &str) {
        self.wait_js(
            what,
            &format!("{LAST}.querySelector('.turn-body').textContent.includes('{text}')"),
            WAIT,
        )
        .await;
    }

    /// Whether the last answer's `selector` element is hidden.
    async fn hidden_in_answer(&self, selector: &str) -> Value {
        self.eval(&format!("{LAST}.querySelector('{selector}').hidden"))
            .await
    }

    /// Waits for the last answer to be done and checks its text.
    async fn expect_answer(&self, text: &str) {
        self.wait_state("done", WAIT).await;
        assert_eq!(self.answer_text().await, text, "the finished answer");
    }

    async fn wait_state(&self, state: &str, timeout: Duration) {
        self.wait_js(
            &format!("the last answer to be {state}"),
            &format!("{LAST} && {LAST}.dataset.state === '{state}'"),
            timeout,
        )
        .await;
    }

    /// Screenshot to `target/artifacts/<name>`, checked to be non-blank.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        check_not_blank(&png, name);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
        std::fs::create_dir_all(&dir).expect("create target/artifacts");
        let path = dir.join(name);
        std::fs::write(&path, &png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }
}

/// What the page shows, for timeout messages.
const PAGE_SUMMARY: &str = "(() => { const t = Array.from(document.querySelectorAll('#messages li.turn.assistant')).pop(); \
    return { status: document.getElementById('status-text').textContent, \
             button: document.getElementById('send').textContent, \
             turns: document.querySelectorAll('#messages li.turn').length, \
             last_state: t ? t.dataset.state : null, \
             last_text: t ? t.textContent.slice(-400) : null }; })()";

/// Whether `v` is a string containing `needle`.
fn has_text(v: &Value, needle: &str) -> bool {
    v.as_str().is_some_and(|t| t.contains(needle))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Decodes the PNG and checks it is a real picture: sane size, many
/// colours, no single colour covering (almost) all of it.
fn check_not_blank(png_bytes: &[u8], name: &str) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("decode screenshot");
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{name}: 8-bit PNG");
    assert!(
        info.width >= 300 && info.height >= 300,
        "{name}: {}x{} is too small",
        info.width,
        info.height
    );
    let pixels = &buf[..info.buffer_size()];
    let mut counts: HashMap<&[u8], usize> = HashMap::new();
    for px in pixels.chunks_exact(channels) {
        *counts.entry(px).or_default() += 1;
    }
    let total = pixels.len() / channels;
    let top = counts.values().copied().max().unwrap_or(0);
    assert!(
        counts.len() >= 16,
        "{name}: only {} distinct colours: blank?",
        counts.len()
    );
    assert!(
        top * 100 < total * 97,
        "{name}: one colour covers {top} of {total} pixels: blank?"
    );
}

// ---------------------------------------------------------------------------
// Gateway and upstream helpers
// ---------------------------------------------------------------------------

/// Starts the gateway on `bind` (port 0 or a port to reuse) for `fake`.
async fn gateway_on(bind: &str, fake: &FakeUpstream, extra: &[&str]) -> netfly::Gateway {
    support::init();
    let url = fake.url();
    let mut args = vec![
        "--bind",
        bind,
        "--upstream",
        url.as_str(),
        "--models",
        MODELS,
        "--backoff-base-ms",
        "10",
        "--backoff-max-ms",
        "50",
    ];
    args.extend_from_slice(extra);
    let config = netfly::Config::from_args(args.clone(), |_: &str| None)
        .unwrap_or_else(|e| panic!("gateway config {args:?}: {e}"));
    netfly::Gateway::start(config)
        .await
        .unwrap_or_else(|e| panic!("gateway on {bind}: {e}"))
}

/// A browser test's set-up: its turn at the browser (held until dropped),
/// `script` behind a gateway with `args`, and a `width`×`height` browser on
/// the page (with `query` after its `/`), connected.
async fn open_page(
    script: Vec<Reply>,
    args: &[&str],
    (width, height): (u32, u32),
    query: &str,
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    FakeUpstream,
    netfly::Gateway,
    Browser,
) {
    let turn = BROWSER_TURN.lock().await;
    let fake = FakeUpstream::start(script);
    let gateway = gateway_on("127.0.0.1:0", &fake, args).await;
    let browser = Browser::launch(width, height).await;
    browser
        .goto(&format!("http://{}/{query}", gateway.addr))
        .await;
    browser.wait_connected().await;
    (turn, fake, gateway, browser)
}

/// An OpenAI stream of `pieces`, one event (one TCP write) each, `gap`
/// between them, and a pause of `pause` after piece number `pause_after`.
fn stream_with_pause(pieces: &[&str], gap: Duration, pause_after: usize, pause: Duration) -> Reply {
    let mut parts = vec![Part::Bytes(event(&json!({
        "id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "delta": { "role": "assistant" }, "finish_reason": null }]
    })))];
    for (i, piece) in pieces.iter().enumerate() {
        let wait = if i == pause_after + 1 { pause } else { gap };
        parts.push(Part::Delay(wait));
        parts.push(Part::Bytes(event(&chunk(piece))));
    }
    parts.push(Part::Bytes(event(&finish_chunk("stop"))));
    parts.push(Part::Bytes(done_event()));
    Reply::sse(parts)
}

/// 400 numbered pieces (`piece(i)`), 60 ms apart, then a stall: an answer
/// still streaming for as long as a test needs.
fn long_stalled_answer(piece: impl Fn(usize) -> String) -> Reply {
    let pieces: Vec<String> = (0..400).map(piece).collect();
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    Reply::sse_words_slow(&pieces, Duration::from_millis(60)).with_end(End::Stall)
}

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

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

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
    assert_eq!(
        browser
            .eval(&format!(
                "{LAST}.querySelector('.turn-body').getAttribute('aria-live')"
            ))
            .await,
        "polite",
        "the streaming answer is an aria-live region"
    );
    // Streaming appends: the nodes already shown stay (a screen reader
    // hears the new words, not the whole answer again).
    browser
        .eval(&format!(
            "{LAST}.querySelector('.turn-body .prose').dataset.probe = 'kept'"
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
        browser.answer_text().await,
        expected,
        "the page shows exactly the upstream's text"
    );
    assert_eq!(
        browser
            .eval(&format!(
                "{LAST}.querySelector('.turn-body .prose').dataset.probe"
            ))
            .await,
        "kept",
        "streaming re-created the text already shown"
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
    browser.click("#settings summary").await;
    browser
        .client
        .find(Locator::Id("system-prompt"))
        .await
        .expect("system prompt box")
        .send_keys("Be brief.")
        .await
        .expect("type the system prompt");
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
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        browser.answer_text().await,
        frozen,
        "text kept arriving after Stop"
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
    assert_eq!(history[1]["content"], frozen.as_str());
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

/// The gateway restarts under the page: the answer in flight is marked
/// interrupted, the page reconnects by itself, and the next message works.
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
    browser.wait_state("interrupted", WAIT).await;
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
        "an interrupted turn gives the composer back"
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
    let interrupted = browser
        .eval(
            "document.querySelectorAll('#messages li.turn.assistant[data-state=\"interrupted\"]').length",
        )
        .await;
    assert_eq!(interrupted, 1, "the cut turn stays marked as interrupted");

    browser.close_with(gateway).await;
}
