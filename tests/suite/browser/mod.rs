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
//! - `chat`: streaming, Stop, errors, reconnect after a gateway restart;
//! - `markdown`: Markdown rendered safely, the renderer's and the thinking
//!   section's unit checks run in the page, and the cost of rendering a
//!   20,000-word answer (printed);
//! - `client`: the protocol client module's resume logic against a scripted
//!   socket in the page;
//! - `a11y`: axe-core at three viewports in each state, a keyboard-only chat;
//! - `persistence`: the conversation across a reload, New chat, image attach;
//! - `resume`: an answer across a cut connection (a TCP relay) and a reload.
//!
//! axe-core comes from `tests/js/node_modules` (`npm ci` in
//! `scripts/install-browser.sh`); `NETFLY_TEST_AXE` points at another
//! `axe.min.js`.
//!
//! Artefacts: `target/artifacts/chat-mid-answer.png` (the page while an
//! answer streams in) and `target/artifacts/chat-phone-dark.png`.

mod a11y;
mod chat;
mod client;
mod markdown;
mod persistence;
mod resume;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::fake::{chunk, done_event, event, finish_chunk};
use crate::support::{self, End, FakeUpstream, Part, Reply};

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

    /// Like [`Browser::expect_no_console_errors`], but failed WebSocket
    /// connection attempts (expected while a connection is cut) are allowed.
    async fn expect_no_console_errors_but_reconnects(&self) {
        let errors: Vec<String> = self
            .console_errors()
            .await
            .into_iter()
            .filter(|e| !e.contains("WebSocket connection to"))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
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

    /// Evaluates a JS expression in the page (`blocks_of(el)`, the
    /// Markdown blocks of an answer body, in or out of their chunks, is
    /// defined for it).
    async fn eval(&self, expr: &str) -> Value {
        self.client
            .execute(&format!("{BLOCKS_OF} return ({expr});"), vec![])
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
    /// Opens the settings and types `text` as the system prompt.
    async fn set_system_prompt(&self, text: &str) {
        self.click("#settings summary").await;
        self.client
            .find(Locator::Id("system-prompt"))
            .await
            .expect("system prompt box")
            .send_keys(text)
            .await
            .expect("type the system prompt");
    }

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

    /// Evaluates an async JS body (`await` allowed; its `return` value is
    /// the result) in the page.
    async fn eval_async(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1]; {BLOCKS_OF} \
             (async () => {{ {body} }})().then(done, (e) => done({{ __error: String(e && e.stack || e) }}));"
        );
        let value = self
            .client
            .execute_async(&script, vec![])
            .await
            .unwrap_or_else(|e| panic!("evaluate async `{body}`: {e}"));
        if let Some(err) = value.get("__error") {
            panic!("script failed: {err}\n{body}");
        }
        value
    }

    /// Presses keys with WebDriver key actions (each pressed and released
    /// in turn; `Key::Shift` etc. as chars), on whatever has the focus.
    async fn press(&self, keys: &[char]) {
        let mut actions = KeyActions::new("keyboard".to_string());
        for &k in keys {
            actions = actions
                .then(KeyAction::Down { value: k })
                .then(KeyAction::Up { value: k });
        }
        self.client
            .perform_actions(actions)
            .await
            .unwrap_or_else(|e| panic!("press {keys:?}: {e}"));
    }

    /// Presses `key` with Shift held.
    async fn press_shifted(&self, key: Key) {
        let shift = char::from(Key::Shift);
        let actions = KeyActions::new("keyboard".to_string())
            .then(KeyAction::Down { value: shift })
            .then(KeyAction::Down {
                value: char::from(key),
            })
            .then(KeyAction::Up {
                value: char::from(key),
            })
            .then(KeyAction::Up { value: shift });
        self.client
            .perform_actions(actions)
            .await
            .unwrap_or_else(|e| panic!("press Shift+{key:?}: {e}"));
    }

    /// Types text with key actions (no element lookup: into the focus).
    async fn type_keys(&self, text: &str) {
        let keys: Vec<char> = text.chars().collect();
        self.press(&keys).await;
    }

    /// A short description of the focused element: `#id`, or
    /// `tag.class "text"`; `body` when focus is nowhere.
    async fn focused(&self) -> String {
        self.eval_text(FOCUSED).await
    }

    /// Replaces the clipboard with a recorder: what the page copies lands
    /// in `window.__copied` (exactly as passed to `writeText`).
    async fn record_clipboard(&self) {
        self.eval(
            "(() => { window.__copied = null; Object.defineProperty(navigator, 'clipboard', \
             { configurable: true, value: { writeText: async (t) => { window.__copied = t; } } }); return true; })()",
        )
        .await;
    }

    /// Clicks `css` (with the clipboard recorded) and returns what it copied.
    async fn copied_by(&self, css: &str) -> String {
        self.record_clipboard().await;
        self.click(css).await;
        let value = self
            .wait_js(
                &format!("{css} to copy"),
                "typeof window.__copied === 'string' ? { text: window.__copied } : null",
                WAIT,
            )
            .await;
        value["text"].as_str().unwrap_or_default().to_string()
    }

    /// The last answer's Markdown source, as its Copy button copies it.
    async fn answer_source(&self) -> String {
        self.copied_by("#messages li.turn.assistant:last-child button.copy")
            .await
    }

    /// Emulates a viewport and colour scheme.
    async fn set_view(&self, view: View) {
        let (width, height, mobile, dark) = match view {
            View::DesktopLight => (1280, 860, false, false),
            View::DesktopDark => (1280, 860, false, true),
            View::Phone => (390, 844, true, false),
        };
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
        let scheme = if dark { "dark" } else { "light" };
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
        // The page re-checks which blocks scroll sideways after a resize.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    /// Runs axe-core on the page as it is: serious and critical violations
    /// fail the test, moderate and minor ones are printed. `label` names
    /// the state and viewport in the output.
    async fn axe(&self, label: &str) {
        let loaded = self.eval("typeof window.axe === 'object'").await;
        if loaded != Value::Bool(true) {
            let source = axe_source();
            self.client
                .execute(&source, vec![])
                .await
                .expect("inject axe-core");
        }
        let result = self
            .eval_async(
                "const r = await axe.run(document, { resultTypes: ['violations'] }); \
                 return r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help, \
                   nodes: v.nodes.slice(0, 5).map(n => ({ target: n.target.join(' '), summary: n.failureSummary })) }));",
            )
            .await;
        let violations = result.as_array().cloned().unwrap_or_default();
        let mut serious = Vec::new();
        for v in &violations {
            let impact = v["impact"].as_str().unwrap_or("unknown");
            println!("axe [{label}] {impact}: {} ({})", v["id"], v["help"]);
            for n in v["nodes"].as_array().into_iter().flatten() {
                println!("    {} -- {}", n["target"], n["summary"]);
            }
            if impact == "serious" || impact == "critical" {
                serious.push(v.clone());
            }
        }
        if violations.is_empty() {
            println!("axe [{label}]: no violations");
        }
        assert!(
            serious.is_empty(),
            "axe [{label}]: serious/critical violations: {:#}",
            Value::Array(serious)
        );
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

/// The three viewports the accessibility checks run at.
#[derive(Clone, Copy, Debug)]
enum View {
    DesktopLight,
    DesktopDark,
    Phone,
}

const VIEWS: [View; 3] = [View::DesktopLight, View::DesktopDark, View::Phone];

/// The text of `axe.min.js`: `NETFLY_TEST_AXE`, else the npm package under
/// `tests/js/node_modules`.
fn axe_source() -> String {
    let path = std::env::var_os("NETFLY_TEST_AXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the accessibility tests need axe-core: run `scripts/install-browser.sh` \
             (npm ci in tests/js), or set NETFLY_TEST_AXE",
            path.display()
        )
    })
}

/// `blocks_of(el)`: an answer body's Markdown blocks, in order, whether
/// final (grouped in `div.md-chunk`) or still open.
const BLOCKS_OF: &str = "const blocks_of = (el) => Array.from(el.children).flatMap(c => \
    c.classList.contains('md-chunk') ? Array.from(c.children) : [c]);";

/// A JS expression describing the focused element (see `Browser::focused`).
const FOCUSED: &str = "(() => { const a = document.activeElement; \
    if (!a || a === document.body) return 'body'; \
    if (a.id) return '#' + a.id; \
    return a.tagName.toLowerCase() + '.' + Array.from(a.classList).join('.') + ' ' + JSON.stringify((a.textContent || '').trim().slice(0, 30)); })()";

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

/// A Markdown answer with every construct the page renders: heading,
/// emphasis, inline code, nested and ordered lists, a table with
/// alignments, a fenced code block with a language (holding markup), a
/// quote with a safe link, unsafe links (`javascript:`, `data:`), a bare
/// URL, literal HTML, and a hard break.
const MARKDOWN_ANSWER: &str = "## Plan\n\
\n\
Here is **the plan**, with *emphasis* and `inline code`:\n\
\n\
1. Install it\n\
2. Run it:\n   \
   - locally\n   \
   - in CI\n\
\n\
| Tool | Version | Notes |\n\
|:-----|--------:|:-----:|\n\
| rustc | 1.80 | stable |\n\
| node | 20 | LTS |\n\
\n\
```python\n\
def greet(name):\n    \
    print(f\"<b>hi</b> {name}\")  # <script>alert(1)</script>\n\
```\n\
\n\
> A quote with a [safe link](https://example.com/docs?a=1&b=2 \"Docs\").\n\
\n\
Bad links: [click me](javascript:alert(1)), [data](data:text/html,<script>alert(1)</script>), \
<javascript:alert(2)> and https://example.org/path.\n\
\n\
Literal <script>window.__netflyPwned = 1</script> and <img src=x onerror=\"window.__netflyPwned = 2\"> stay text.  \n\
Hard break above.\n";

/// The code of [`MARKDOWN_ANSWER`]'s fenced block, exactly.
const MARKDOWN_CODE: &str =
    "def greet(name):\n    print(f\"<b>hi</b> {name}\")  # <script>alert(1)</script>\n";

/// `text` in pieces of `size` characters (the last one shorter).
fn pieces_of(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size)
        .map(|c| c.iter().collect::<String>())
        .collect()
}

/// An OpenAI stream of `text` in `size`-character deltas, `gap` apart.
fn stream_text(text: &str, size: usize, gap: Duration) -> Reply {
    let pieces = pieces_of(text, size);
    let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
    Reply::sse_words_slow(&pieces, gap)
}

/// An OpenAI stream of `text` in `size`-character deltas, `gap` apart,
/// that then stalls without finishing (an answer still streaming).
fn stream_text_then_stall(text: &str, size: usize, gap: Duration) -> Reply {
    let events: Vec<Vec<u8>> = pieces_of(text, size)
        .iter()
        .map(|p| crate::support::fake::event(&chunk(p)))
        .collect();
    Reply::sse(crate::support::fake::with_gaps(events, gap)).with_end(End::Stall)
}

/// A TCP relay on `127.0.0.1:0` in front of the gateway: the browser talks
/// through it, and [`Relay::sever`] cuts every connection it carries (as a
/// network switch or a sleeping laptop does) while new ones still pass.
struct Relay {
    addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut list) = held.lock() {
                    list.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                    list.push(task);
                }
            }
        });
        Relay {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every connection open now (their sockets are dropped).
    fn sever(&self) -> usize {
        let tasks: Vec<_> = self
            .conns
            .lock()
            .map(|mut l| l.drain(..).collect())
            .unwrap_or_default();
        let live = tasks.iter().filter(|t| !t.is_finished()).count();
        for t in tasks {
            t.abort();
        }
        live
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

/// Records, in the page, every status announcement (`window.__announced`).
const RECORD_ANNOUNCEMENTS: &str =
    "(() => { window.__announced = []; const a = document.getElementById('announcer'); \
    new MutationObserver(() => { if (a.textContent) window.__announced.push(a.textContent); }) \
    .observe(a, { childList: true, characterData: true, subtree: true }); return true; })()";
