//! Markdown in the page: a streamed answer rendered safely (real gateway
//! and fake upstream), the renderer's unit checks and the thinking
//! section's, run in the page, and the cost of rendering a 20,000-word
//! answer (printed, no threshold).

use std::time::Duration;

use fantoccini::key::Key;
use serde_json::{json, Value};

use super::*;
use crate::support::{Part, Reply};

/// Markdown → the HTML the renderer builds (both as JSON string literals),
/// for headings, emphasis, code spans, breaks, lists, quotes, fences,
/// tables, links (safe and unsafe), images and literal HTML.
const CASES: &[(&str, &str)] = &[
    (
        r##""# One\n## Two\n###### Six\n####### seven""##,
        r##""<h3 class=\"md-h1\">One</h3><h3 class=\"md-h2\">Two</h3><h6 class=\"md-h6\">Six</h6><p>####### seven</p>""##,
    ),
    (
        r##""Setext\n===\n\nTwo\n---""##,
        r##""<h3 class=\"md-h1\">Setext</h3><h3 class=\"md-h2\">Two</h3>""##,
    ),
    (
        r##""**strong** *em* _em_ __strong__ ***both*** ~~del~~ snake_case_name 2*3*4""##,
        r##""<p><strong>strong</strong> <em>em</em> <em>em</em> <strong>strong</strong> <em><strong>both</strong></em> <del>del</del> snake_case_name 2<em>3</em>4</p>""##,
    ),
    (
        r##""a `code <b>` b `` x ` y `` c \\*not em\\*""##,
        r##""<p>a <code>code &lt;b&gt;</code> b <code>x ` y</code> c *not em*</p>""##,
    ),
    (
        r##""line one\nline two  \nline three\\\nline four""##,
        r##""<p>line one\nline two<br>line three<br>line four</p>""##,
    ),
    (
        r##""- a\n- b\n  - b1\n    - b11\n- c""##,
        r##""<ul><li><span class=\"tight\">a</span></li><li><span class=\"tight\">b</span><ul><li><span class=\"tight\">b1</span><ul><li><span class=\"tight\">b11</span></li></ul></li></ul></li><li><span class=\"tight\">c</span></li></ul>""##,
    ),
    (
        r##""1. one\n2. two\n\n7) seven\n8) eight""##,
        r##""<ol><li><span class=\"tight\">one</span></li><li><span class=\"tight\">two</span></li></ol><ol start=\"7\"><li><span class=\"tight\">seven</span></li><li><span class=\"tight\">eight</span></li></ol>""##,
    ),
    (
        r##""- loose\n\n- list""##,
        r##""<ul><li><p>loose</p></li><li><p>list</p></li></ul>""##,
    ),
    (
        r##""Intro:\n- interrupts\n- a paragraph""##,
        r##""<p>Intro:</p><ul><li><span class=\"tight\">interrupts</span></li><li><span class=\"tight\">a paragraph</span></li></ul>""##,
    ),
    (
        r##""> quoted **text**\n> - list in quote\n\n> second""##,
        r##""<blockquote><p>quoted <strong>text</strong></p><ul><li><span class=\"tight\">list in quote</span></li></ul></blockquote><blockquote><p>second</p></blockquote>""##,
    ),
    (
        r##""```js title\nlet a = '<x>';\n\n  indented\n```""##,
        r##""<div class=\"code-block\"><div class=\"code-head\"><span class=\"code-lang\">js</span><button type=\"button\" class=\"ghost small copy-code\" aria-label=\"Copy js code\">Copy</button></div><pre class=\"code\"><code data-lang=\"js\">let a = '&lt;x&gt;';\n\n  indented\n</code></pre></div>""##,
    ),
    (
        r##""~~~\n```\nnot closed by backticks\n~~~""##,
        r##""<div class=\"code-block\"><div class=\"code-head\"><span class=\"code-lang\">code</span><button type=\"button\" class=\"ghost small copy-code\" aria-label=\"Copy code\">Copy</button></div><pre class=\"code\"><code>```\nnot closed by backticks\n</code></pre></div>""##,
    ),
    (
        r##""```\nunclosed at end""##,
        r##""<div class=\"code-block\"><div class=\"code-head\"><span class=\"code-lang\">code</span><button type=\"button\" class=\"ghost small copy-code\" aria-label=\"Copy code\">Copy</button></div><pre class=\"code\"><code>unclosed at end\n</code></pre></div>""##,
    ),
    (
        r##""| L | C | R |\n|:--|:-:|--:|\n| 1 | 2 | 3 |\n| a \\| b | `c|d` |""##,
        r##""<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\" style=\"text-align: left;\">L</th><th scope=\"col\" style=\"text-align: center;\">C</th><th scope=\"col\" style=\"text-align: right;\">R</th></tr></thead><tbody><tr><td style=\"text-align: left;\">1</td><td style=\"text-align: center;\">2</td><td style=\"text-align: right;\">3</td></tr><tr><td style=\"text-align: left;\">a | b</td><td style=\"text-align: center;\">`c</td><td style=\"text-align: right;\">d`</td></tr></tbody></table></div>""##,
    ),
    (
        r##""[site](https://example.com/a_(b)?q=1 \"T\") [rel](/relative) [js](javascript:alert(1)) [js2](JaVaScRiPt:alert(1)) [ws]( java\tscript:alert(1))""##,
        r##""<p><a href=\"https://example.com/a_(b)?q=1\" target=\"_blank\" rel=\"noopener noreferrer\" title=\"T\">site</a> <span class=\"link-blocked\" title=\"Link not opened: only http and https links are\">rel</span> <span class=\"link-blocked\" title=\"Link not opened: only http and https links are\">js</span> <span class=\"link-blocked\" title=\"Link not opened: only http and https links are\">js2</span> [ws]( java\tscript:alert(1))</p>""##,
    ),
    (
        r##""<https://a.example/x> <mailto:x@y.z> http://bare.example/p_q_r. (https://paren.example/x)""##,
        r##""<p><a href=\"https://a.example/x\" target=\"_blank\" rel=\"noopener noreferrer\">https://a.example/x</a> <span class=\"link-blocked\" title=\"Link not opened: only http and https links are\">mailto:x@y.z</span> <a href=\"http://bare.example/p_q_r\" target=\"_blank\" rel=\"noopener noreferrer\">http://bare.example/p_q_r</a>. (<a href=\"https://paren.example/x\" target=\"_blank\" rel=\"noopener noreferrer\">https://paren.example/x</a>)</p>""##,
    ),
    (
        r##""![alt text](https://img.example/i.png) ![x](javascript:alert(1))""##,
        r##""<p><a href=\"https://img.example/i.png\" target=\"_blank\" rel=\"noopener noreferrer\" class=\"image-link\">alt text</a> <span class=\"link-blocked\" title=\"Link not opened: only http and https links are\">x</span></p>""##,
    ),
    (
        r##""<script>alert(1)</script> <b>bold?</b> &amp; &lt;""##,
        r##""<p>&lt;script&gt;alert(1)&lt;/script&gt; &lt;b&gt;bold?&lt;/b&gt; &amp;amp; &amp;lt;</p>""##,
    ),
    (r##""***\n---\n___""##, r##""<hr><hr><hr>""##),
];

/// A streamed Markdown answer becomes the right elements: heading, lists
/// (nested, ordered), table with alignments, code block with its language
/// and an exact copy, links only to http(s) (new tab, no opener, no
/// referrer), unsafe links as text, literal HTML as text, no script ever
/// created; the answer's Copy copies its Markdown exactly.
#[actix_web::test]
async fn markdown_answer_is_rendered_safely() {
    let script = vec![stream_text(MARKDOWN_ANSWER, 7, Duration::from_millis(4))];
    let (_turn, fake, gateway, browser) = open_page(script, &[], (1280, 860), "").await;
    browser
        .eval("(() => { window.__scripts = 0; new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes) \
               if (n.nodeName === 'SCRIPT' || (n.querySelectorAll && n.querySelectorAll('script').length)) window.__scripts++; }) \
               .observe(document.getElementById('messages'), { childList: true, subtree: true }); return true; })()")
        .await;
    browser.send_message("Plan it").await;
    browser.wait_state("done", WAIT).await;

    let body = format!("{LAST}.querySelector('.turn-body')");
    let shape = browser
        .eval(&format!(
            "blocks_of({body}).map(c => c.tagName + (c.className ? '.' + c.className : ''))"
        ))
        .await;
    assert_eq!(
        shape,
        json!([
            "H3.md-h2",
            "P",
            "OL",
            "DIV.table-wrap",
            "DIV.code-block",
            "BLOCKQUOTE",
            "P",
            "P"
        ]),
        "the blocks of the answer"
    );
    let lists = browser
        .eval(&format!(
            "(() => {{ const ol = {body}.querySelector('ol'); return [ol.children.length, \
             Array.from(ol.querySelectorAll(':scope > li > ul > li')).map(li => li.textContent)]; }})()"
        ))
        .await;
    assert_eq!(
        lists,
        json!([2, ["locally", "in CI"]]),
        "the ordered list and its nested list"
    );
    let table = browser
        .eval(&format!(
            "(() => {{ const t = {body}.querySelector('table'); return {{ \
               head: Array.from(t.querySelectorAll('thead th')).map(th => [th.textContent, th.style.textAlign]), \
               rows: Array.from(t.querySelectorAll('tbody tr')).map(tr => Array.from(tr.cells).map(td => td.textContent)) }}; }})()"
        ))
        .await;
    assert_eq!(
        table,
        json!({
            "head": [["Tool", "left"], ["Version", "right"], ["Notes", "center"]],
            "rows": [["rustc", "1.80", "stable"], ["node", "20", "LTS"]],
        }),
        "the table"
    );
    let code = browser
        .eval(&format!(
            "[{body}.querySelector('.code-lang').textContent, {body}.querySelector('pre.code code').textContent]"
        ))
        .await;
    assert_eq!(
        code,
        json!(["python", MARKDOWN_CODE]),
        "the code block, exactly"
    );
    assert_eq!(
        browser
            .copied_by("#messages li.turn.assistant:last-child button.copy-code")
            .await,
        MARKDOWN_CODE,
        "the code's Copy copies the code exactly"
    );
    let links = browser
        .eval(&format!(
            "Array.from({body}.querySelectorAll('a')).map(a => [a.textContent, a.getAttribute('href'), a.target, a.rel, a.title])"
        ))
        .await;
    assert_eq!(
        links,
        json!([
            [
                "safe link",
                "https://example.com/docs?a=1&b=2",
                "_blank",
                "noopener noreferrer",
                "Docs"
            ],
            [
                "https://example.org/path",
                "https://example.org/path",
                "_blank",
                "noopener noreferrer",
                ""
            ],
        ]),
        "only the http(s) links are links"
    );
    let blocked = browser
        .eval(&format!(
            "Array.from({body}.querySelectorAll('.link-blocked')).map(s => [s.tagName, s.textContent])"
        ))
        .await;
    assert_eq!(
        blocked,
        json!([
            ["SPAN", "click me"],
            ["SPAN", "data"],
            ["SPAN", "javascript:alert(2)"]
        ]),
        "unsafe links are shown as text"
    );
    let last = browser
        .eval(&format!(
            "blocks_of({body}).filter(b => b.tagName === 'P').pop().innerHTML"
        ))
        .await;
    assert_eq!(
        last,
        "Literal &lt;script&gt;window.__netflyPwned = 1&lt;/script&gt; and \
         &lt;img src=x onerror=\"window.__netflyPwned = 2\"&gt; stay text.<br>Hard break above.",
        "literal HTML is text; two trailing spaces are a hard break"
    );
    let unsafe_dom = browser
        .eval("[document.querySelectorAll('#messages script, #messages img, #messages iframe, #messages [onerror], \
               #messages a[href^=\"javascript\" i], #messages a[href^=\"data\" i]').length, window.__scripts, typeof window.__netflyPwned]")
        .await;
    assert_eq!(
        unsafe_dom,
        json!([0, 0, "undefined"]),
        "no script, image or unsafe href was ever created"
    );
    assert_eq!(
        browser.answer_source().await,
        MARKDOWN_ANSWER,
        "the answer's Copy copies its Markdown exactly"
    );
    assert_eq!(fake.requests().len(), 1);
    browser
        .expect_no_console_errors("after the Markdown answer")
        .await;
    browser.close_with(gateway).await;
}

/// The renderer's unit checks, in the page: each case's HTML exactly;
/// streaming in random pieces ends with the same DOM as rendering at once,
/// and blocks once final are never replaced; safeHref's verdicts.
#[actix_web::test]
async fn markdown_renderer_unit_checks() {
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse_words(&["unused"])], &[], (1024, 768), "").await;
    let cases: Value = CASES
        .iter()
        .map(|(input, html)| {
            json!([
                serde_json::from_str::<Value>(input).expect("case input"),
                serde_json::from_str::<Value>(html).expect("case html")
            ])
        })
        .collect();
    let result = browser
        .eval_async(&format!(
            "const m = await import('/static/markdown.js'); \
             const cases = {cases}; const wrong = []; \
             const blocksOf = (el) => Array.from(el.childNodes).flatMap(c => c.classList && c.classList.contains('md-chunk') ? Array.from(c.childNodes) : [c]); \
             for (const [input, html] of cases) {{ const d = document.createElement('div'); d.append(m.renderMarkdown(input)); \
               if (d.innerHTML !== html) wrong.push({{ input, want: html, got: d.innerHTML }}); }} \
             let seed = 7; const rnd = (n) => {{ seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n; }}; \
             const all = cases.map(c => c[0]); let replaced = 0, differ = 0; \
             for (let r = 0; r < 150; r++) {{ \
               let src = ''; const n = 2 + rnd(8); for (let i = 0; i < n; i++) src += all[rnd(all.length)] + (rnd(3) ? '\\n\\n' : '\\n'); \
               const a = document.createElement('div'); const v = new m.MarkdownView(a); const seen = []; \
               for (let i = 0; i < src.length;) {{ const k = 1 + rnd(9); v.append(src.slice(i, i + k)); i += k; v.render(); \
                 v.committed().forEach((node, j) => {{ if (seen[j] && seen[j] !== node) replaced++; seen[j] = node; }}); }} \
               v.render(true); const b = document.createElement('div'); const w = new m.MarkdownView(b); w.append(src); w.render(true); \
               const flat = document.createElement('div'); flat.append(m.renderMarkdown(src)); \
               if (flat.innerHTML !== blocksOf(a).map(n => n.outerHTML).join('')) differ++; \
               if (a.innerHTML !== b.innerHTML) differ++; }} \
             const hrefs = ['https://a.example/x', 'http://b.example', 'javascript:alert(1)', ' javascript:alert(1)', \
               'java\\nscript:alert(1)', 'JAVASCRIPT:alert(1)', 'data:text/html,x', 'vbscript:x', '/relative', '//evil.example', 'file:///etc/passwd', 'ftp://x.example'] \
               .map(h => [h, m.safeHref(h)]); \
             return {{ wrong, replaced, differ, hrefs }};"
        ))
        .await;
    assert_eq!(result["wrong"], json!([]), "renderer cases");
    assert_eq!(
        result["differ"], 0,
        "streamed rendering equals rendering at once"
    );
    assert_eq!(result["replaced"], 0, "final blocks are never re-created");
    assert_eq!(
        result["hrefs"],
        json!([
            ["https://a.example/x", "https://a.example/x"],
            ["http://b.example", "http://b.example/"],
            ["javascript:alert(1)", null],
            [" javascript:alert(1)", null],
            ["java\nscript:alert(1)", null],
            ["JAVASCRIPT:alert(1)", null],
            ["data:text/html,x", null],
            ["vbscript:x", null],
            ["/relative", null],
            ["//evil.example", null],
            ["file:///etc/passwd", null],
            ["ftp://x.example", null],
        ]),
        "only absolute http(s) URLs are followed"
    );
    browser.close_with(gateway).await;
}

/// The thinking section (reasoning frames; the gateway sends them in phase
/// 2, so a turn is fed frames in the page): shown above the answer, open
/// while streaming, rendered as Markdown, collapsed when the answer ends,
/// toggled with the keyboard, and clean for axe when open.
#[actix_web::test]
async fn thinking_section_renders_reasoning() {
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse_words(&["unused"])], &[], (1280, 860), "").await;
    let steps = browser
        .eval_async(
            "const { AssistantTurn, TurnState } = await import('/static/turn.js'); \
             const turn = new AssistantTurn({ onRetry() {}, onSpeak() {} }); \
             document.getElementById('empty').hidden = true; \
             document.getElementById('messages').append(turn.node); window.__turn = turn; \
             const look = () => ({ hidden: turn.thinking.hidden, open: turn.thinking.open, \
               label: turn.thinking.querySelector('summary').textContent, \
               thinking: blocks_of(turn.thinking.querySelector('.thinking-body')).map(n => n.outerHTML).join(''), \
               answer: turn.body.hidden ? null : turn.body.textContent, state: turn.node.dataset.state, seq: turn.seq, \
               above: !!(turn.thinking.compareDocumentPosition(turn.body) & Node.DOCUMENT_POSITION_FOLLOWING) }); \
             const out = []; turn.begin('t1', null, 'm'); out.push(look()); \
             turn.onFrame({ type: 'start', id: 't1', seq: 1, model: 'm', upstream: 'u', attempt: 1 }); \
             turn.onFrame({ type: 'reasoning', id: 't1', seq: 2, content: 'The user greets me; ' }); \
             turn.onFrame({ type: 'reasoning', id: 't1', seq: 3, content: 'I answer **briefly**.' }); \
             turn.render(); out.push(look()); \
             turn.onFrame({ type: 'delta', id: 't1', seq: 4, content: 'Hello!' }); turn.render(); out.push(look()); \
             turn.finish(TurnState.DONE); out.push(look()); return out;",
        )
        .await;
    let pick = |i: usize| {
        let s = &steps[i];
        json!([
            s["hidden"],
            s["open"],
            s["label"],
            s["answer"],
            s["state"],
            s["seq"]
        ])
    };
    assert_eq!(
        pick(0),
        json!([true, false, "Thinking…", "", "waiting", 0]),
        "before any frame"
    );
    assert_eq!(
        pick(1),
        json!([false, true, "Thinking…", null, "streaming", 3]),
        "reasoning arrived: open"
    );
    assert_eq!(
        steps[1]["thinking"], "<p>The user greets me; I answer <strong>briefly</strong>.</p>",
        "reasoning rendered as Markdown"
    );
    assert_eq!(
        steps[1]["above"], true,
        "the thinking section is above the answer"
    );
    assert_eq!(
        pick(2),
        json!([false, true, "Thinking…", "Hello!", "streaming", 4]),
        "still open while the answer streams"
    );
    let done = pick(3);
    assert_eq!(done[1], false, "collapsed after the answer ended");
    assert!(
        has_text(&done[2], "Thought for"),
        "the label says it thought: {done}"
    );
    assert_eq!(done[3], "Hello!");

    // Keyboard: the summary takes the focus and Enter toggles it.
    browser
        .eval("(window.__turn.thinking.querySelector('summary').focus(), true)")
        .await;
    browser.press(&[char::from(Key::Enter)]).await;
    assert_eq!(
        browser.eval("window.__turn.thinking.open").await,
        true,
        "Enter opens it"
    );
    axe_views(&browser, "thinking open").await;
    browser.press(&[char::from(Key::Enter)]).await;
    assert_eq!(
        browser.eval("window.__turn.thinking.open").await,
        false,
        "Enter closes it"
    );
    browser.close_with(gateway).await;
}

/// Runs axe at every viewport, then goes back to the desktop light one.
pub(super) async fn axe_views(browser: &Browser, state: &str) {
    for view in VIEWS {
        browser.set_view(view).await;
        browser.axe(&format!("{state}, {view:?}")).await;
    }
    browser.set_view(View::DesktopLight).await;
}

/// A 20,000-word Markdown answer (paragraphs, headings, lists, code, tables).
fn long_answer() -> String {
    let mut out = String::new();
    let mut words = 0;
    let mut section = 0;
    while words < 20_000 {
        section += 1;
        out.push_str(&format!("## Section {section}\n\n"));
        for p in 0..3 {
            let sentence: Vec<String> = (0..60)
                .map(|w| format!("word{}", (w * 7 + p + section) % 89))
                .collect();
            out.push_str(&format!(
                "Paragraph {p} with **bold** and `code`: {}.\n\n",
                sentence.join(" ")
            ));
            words += 66;
        }
        out.push_str("- first item with *emphasis*\n- second item\n  - nested item\n\n");
        out.push_str("```rust\nfn main() {\n    println!(\"section\");\n}\n```\n\n");
        out.push_str("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\n");
        words += 20;
    }
    out
}

/// The page's main-thread time per rendered frame while a 20,000-word
/// Markdown answer streams in (printed: median, p95, max, total; long
/// tasks; frame intervals), and the answer arrives exactly.
#[actix_web::test]
async fn long_markdown_answer_render_cost() {
    let text = long_answer();
    let words = text.split_whitespace().count();
    // ~3 words per delta, one event every millisecond or so.
    let pieces: Vec<String> = text
        .split_inclusive(' ')
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|c| c.concat())
        .collect();
    let mut parts = Vec::new();
    for p in &pieces {
        parts.push(Part::Bytes(crate::support::fake::event(
            &crate::support::fake::chunk(p),
        )));
        parts.push(Part::Delay(Duration::from_millis(1)));
    }
    parts.push(Part::Bytes(crate::support::fake::event(
        &crate::support::fake::finish_chunk("stop"),
    )));
    parts.push(Part::Bytes(crate::support::fake::done_event()));
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse(parts)], &[], (1280, 860), "?perf").await;
    browser
        .eval("(() => { const p = window.__perfProbe = { longTasks: [], frames: [] }; \
               new PerformanceObserver(l => { for (const e of l.getEntries()) p.longTasks.push(e.duration); }).observe({ type: 'longtask' }); \
               let last = performance.now(); const tick = (t) => { p.frames.push(t - last); last = t; if (!p.stop) requestAnimationFrame(tick); }; \
               requestAnimationFrame(tick); return true; })()")
        .await;
    let started = Instant::now();
    browser.send_message("Write a lot").await;
    browser
        .wait_js(
            "the long answer to finish",
            &format!("{LAST} && {LAST}.dataset.state === 'done'"),
            Duration::from_secs(120),
        )
        .await;
    let elapsed = started.elapsed();
    let stats = browser
        .eval("(() => { window.__perfProbe.stop = true; const r = window.__netflyPerf.renderMs.slice(); \
               const q = (a, f) => { const s = a.slice().sort((x, y) => x - y); return s.length ? s[Math.min(s.length - 1, Math.floor(f * s.length))] : 0; }; \
               const sum = (a) => a.reduce((x, y) => x + y, 0); const n = r.length; const quarter = Math.floor(n / 4); \
               const l = window.__netflyPerf.layoutMs; \
               return { frames: n, median: q(r, 0.5), p95: q(r, 0.95), max: q(r, 1), total: sum(r), \
                 layoutMedian: q(l, 0.5), layoutFirstQuarterMedian: q(l.slice(0, quarter), 0.5), layoutLastQuarterMedian: q(l.slice(n - quarter), 0.5), \
                 firstQuarterMedian: q(r.slice(0, quarter), 0.5), lastQuarterMedian: q(r.slice(n - quarter), 0.5), \
                 longTasks: window.__perfProbe.longTasks.length, longTaskMs: sum(window.__perfProbe.longTasks), \
                 frameP95: q(window.__perfProbe.frames, 0.95), frameMax: q(window.__perfProbe.frames, 1), \
                 blocks: blocks_of(document.querySelector('#messages li.turn.assistant:last-child .turn-body')).length }; })()")
        .await;
    println!(
        "markdown render cost, {words} words in {} deltas over {:.1} s: {} rendered frames, \
         per frame median {:.2} ms, p95 {:.2} ms, max {:.2} ms, total {:.0} ms \
         (median first quarter {:.2} ms, last quarter {:.2} ms; of which layout: median {:.2} ms, \
         first quarter {:.2} ms, last quarter {:.2} ms); long tasks {} ({:.0} ms); \
         animation frame interval p95 {:.1} ms, max {:.1} ms; {} blocks",
        pieces.len(),
        elapsed.as_secs_f64(),
        stats["frames"],
        stats["median"].as_f64().unwrap_or(0.0),
        stats["p95"].as_f64().unwrap_or(0.0),
        stats["max"].as_f64().unwrap_or(0.0),
        stats["total"].as_f64().unwrap_or(0.0),
        stats["firstQuarterMedian"].as_f64().unwrap_or(0.0),
        stats["lastQuarterMedian"].as_f64().unwrap_or(0.0),
        stats["layoutMedian"].as_f64().unwrap_or(0.0),
        stats["layoutFirstQuarterMedian"].as_f64().unwrap_or(0.0),
        stats["layoutLastQuarterMedian"].as_f64().unwrap_or(0.0),
        stats["longTasks"],
        stats["longTaskMs"].as_f64().unwrap_or(0.0),
        stats["frameP95"].as_f64().unwrap_or(0.0),
        stats["frameMax"].as_f64().unwrap_or(0.0),
        stats["blocks"],
    );
    assert!(words >= 20_000, "the answer has {words} words");
    assert!(
        stats["frames"].as_u64().unwrap_or(0) > 10,
        "rendered in many frames: {stats}"
    );
    assert_eq!(
        browser.answer_source().await,
        text,
        "the long answer arrived exactly"
    );
    browser.close_with(gateway).await;
}

/// The thinking section end to end: the real gateway turns an upstream's
/// `reasoning_content` (DeepSeek's shape) into `reasoning` frames, and the
/// page shows them above the answer, open while they stream, collapsed
/// once the answer ends; the answer itself is exact.
#[actix_web::test]
async fn thinking_section_from_a_real_reasoning_stream() {
    let mut parts = vec![Part::Bytes(event(&json!({
        "id": "chatcmpl-r", "object": "chat.completion.chunk", "model": "m",
        "choices": [{ "index": 0, "delta": { "role": "assistant", "content": null }, "finish_reason": null }]
    })))];
    let thought = ["The user ", "says hi; ", "answer **warmly**."];
    for piece in thought {
        parts.push(Part::Delay(Duration::from_millis(60)));
        parts.push(Part::Bytes(event(&json!({
            "id": "chatcmpl-r", "object": "chat.completion.chunk", "model": "m",
            "choices": [{ "index": 0, "delta": { "content": null, "reasoning_content": piece }, "finish_reason": null }]
        }))));
    }
    // A pause while the thinking section is open and the answer not begun.
    parts.push(Part::Delay(Duration::from_millis(700)));
    for piece in ["Hello ", "there!"] {
        parts.push(Part::Bytes(event(&crate::support::fake::chunk(piece))));
        parts.push(Part::Delay(Duration::from_millis(60)));
    }
    parts.push(Part::Bytes(event(&crate::support::fake::finish_chunk(
        "stop",
    ))));
    parts.push(Part::Bytes(crate::support::fake::done_event()));
    let (_turn, _fake, gateway, browser) =
        open_page(vec![Reply::sse(parts)], &[], (1280, 860), "").await;
    browser.send_message("hi").await;
    let open = browser
        .wait_js(
            "the thinking section to open with the whole reasoning",
            &format!(
                "(() => {{ const t = {LAST} && {LAST}.querySelector('details.thinking'); \
                 return t && !t.hidden && t.open && t.textContent.includes('answer warmly') && t.textContent; }})()"
            ),
            WAIT,
        )
        .await;
    assert!(has_text(&open, "The user says hi;"), "{open}");
    axe_views(&browser, "thinking open (real reasoning stream)").await;
    browser.wait_state("done", WAIT).await;
    let end = browser
        .eval(&format!(
            "(() => {{ const t = {LAST}.querySelector('details.thinking'); \
             return [t.open, {LAST}.querySelector('.turn-body').textContent, \
             !!(t.compareDocumentPosition({LAST}.querySelector('.turn-body')) & Node.DOCUMENT_POSITION_FOLLOWING), \
             t.querySelector('strong') && t.querySelector('strong').textContent]; }})()"
        ))
        .await;
    assert_eq!(
        end,
        json!([false, "Hello there!", true, "warmly"]),
        "collapsed after the end, above an exact answer, rendered as Markdown"
    );
    browser.close_with(gateway).await;
}
