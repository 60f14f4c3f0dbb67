/**
 * markdown.js: model output as Markdown, built as DOM nodes (never as HTML
 * text), and re-rendered incrementally while it streams.
 *
 * Supported: ATX and setext headings, paragraphs, hard breaks (two spaces
 * or a backslash before a newline; a single newline also shows as a line
 * break, as chat models mean it), emphasis, strong, ~~strikethrough~~,
 * inline code, fenced code blocks (``` or ~~~, with a language label and a
 * copy button), block quotes, nested ordered/unordered lists, GFM pipe
 * tables, thematic breaks, links `[text](url "title")`, `<url>` and bare
 * http(s) URLs, and images (shown as links, never loaded). Links open only
 * for http: and https: URLs (in a new tab, `rel="noopener noreferrer"`);
 * any other link shows its text only. Raw HTML and entities are shown as
 * the model wrote them. Link reference definitions and indented code
 * blocks are not supported (their text shows as paragraphs).
 *
 * Streaming ({@link MarkdownView}): blocks whose end is decided by complete
 * lines are rendered once and never touched again; only the last, still
 * open block is parsed and rendered again on each update, and patched into
 * the page node by node (so nothing flickers, a focused copy button stays
 * focused, and text already shown keeps its nodes).
 */

// ---------------------------------------------------------------------------
// Lines and indentation
// ---------------------------------------------------------------------------

/** Columns of leading whitespace (a tab advances to the next multiple of 4). */
function indentOf(line) {
  let col = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === " ") col += 1;
    else if (c === "\t") col += 4 - (col % 4);
    else break;
  }
  return col;
}

/** `line` without its first `n` columns of leading whitespace (or all of it, if less). */
function stripCols(line, n) {
  let col = 0;
  let i = 0;
  while (i < line.length && col < n) {
    const c = line[i];
    if (c === " ") {
      col += 1;
      i += 1;
    } else if (c === "\t") {
      const w = 4 - (col % 4);
      if (col + w > n) return " ".repeat(col + w - n) + line.slice(i + 1);
      col += w;
      i += 1;
    } else {
      break;
    }
  }
  return line.slice(i);
}

/** The lines of a text; a final line break does not make an empty last line. */
function sourceLines(text) {
  const lines = text.split("\n");
  if (lines.length > 1 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

const isBlank = (line) => /^[ \t]*$/.test(line);

const FENCE_OPEN = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const ATX = /^ {0,3}(#{1,6})(?:[ \t]+|$)(.*)$/;
const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const SETEXT = /^ {0,3}(=+|-+)[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^( {0,3})([-+*]|\d{1,9}[.)])(?=[ \t]|$)/;
const TABLE_DELIM = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

/** A fence opening line: {indent, fence, info}, or null. */
function fenceOpen(line) {
  const m = FENCE_OPEN.exec(line);
  if (!m) return null;
  const info = m[3].trim();
  if (m[2][0] === "`" && info.includes("`")) return null;
  return { indent: m[1].length, fence: m[2], info };
}

/** A list item marker: {indent, marker, ordered, start, delim, width, content}, or null. */
function listItem(line) {
  const m = LIST_ITEM.exec(line);
  if (!m) return null;
  const indent = m[1].length;
  const marker = m[2];
  const rest = line.slice(indent + marker.length);
  const ordered = /\d/.test(marker[0]);
  const spaces = indentOf(rest);
  const blankItem = isBlank(rest);
  // The content starts 1–4 columns after the marker (5 or more: 1).
  const gap = blankItem ? 1 : spaces > 4 ? 1 : spaces;
  const width = indent + marker.length + gap;
  return {
    indent,
    ordered,
    start: ordered ? parseInt(marker, 10) : 1,
    delim: ordered ? marker[marker.length - 1] : marker,
    width,
    blank: blankItem,
    content: blankItem ? "" : stripCols(rest, gap),
  };
}

/** The cells of a table row (escaped pipes kept as `|`). */
function tableCells(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cur = "";
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "\\" && s[i + 1] === "|") {
      cur += "|";
      i += 1;
    } else if (c === "|") {
      cells.push(cur.trim());
      cur = "";
    } else {
      cur += c;
    }
  }
  cells.push(cur.trim());
  return cells;
}

function tableAlign(line) {
  return tableCells(line).map((c) => {
    const left = c.startsWith(":");
    const right = c.endsWith(":");
    if (left && right) return "center";
    if (right) return "right";
    if (left) return "left";
    return null;
  });
}

/** Whether lines[i] and lines[i+1] start a table. */
function tableStart(lines, i) {
  const head = lines[i];
  const delim = lines[i + 1];
  if (delim === undefined || !head.includes("|") || !TABLE_DELIM.test(delim) || !delim.includes("-")) return false;
  if (!delim.includes("|") && !head.trim().startsWith("|")) return false;
  return tableCells(head).length === tableCells(delim).length;
}

/**
 * Whether `line` starts a block that ends a paragraph (CommonMark: a list
 * interrupts one only with content, and an ordered one only from 1).
 */
function interruptsParagraph(line) {
  if (fenceOpen(line) || ATX.test(line) || HR.test(line) || QUOTE.test(line)) return true;
  const item = listItem(line);
  return item !== null && !item.blank && (!item.ordered || item.start === 1);
}

// ---------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------

/**
 * Parses `lines` into blocks: {type, from, to, ...} with [from, to) the
 * line range. Reads left to right and never looks back: a block that is
 * followed by another was ended by lines that exist, so appending lines
 * changes only the last block (the basis of incremental rendering).
 * @param {string[]} lines
 * @returns {{blocks: object[], blankBetween: boolean}}
 */
export function parseBlocks(lines) {
  const blocks = [];
  let blankBetween = false;
  let sawBlank = false;
  let i = 0;
  const push = (block) => {
    if (blocks.length > 0 && sawBlank) blankBetween = true;
    sawBlank = false;
    blocks.push(block);
  };
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      sawBlank = true;
      i += 1;
      continue;
    }
    const from = i;

    const fence = fenceOpen(line);
    if (fence) {
      const body = [];
      let closed = false;
      i += 1;
      while (i < lines.length) {
        const l = lines[i];
        const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(l);
        if (close && close[1][0] === fence.fence[0] && close[1].length >= fence.fence.length) {
          closed = true;
          i += 1;
          break;
        }
        body.push(stripCols(l, fence.indent));
        i += 1;
      }
      const lang = fence.info.split(/[ \t]/)[0];
      push({ type: "code", from, to: i, lang, text: body.map((l) => `${l}\n`).join(""), closed });
      continue;
    }

    const atx = ATX.exec(line);
    if (atx) {
      const text = atx[2].replace(/(?:^|[ \t]+)#+[ \t]*$/, "").trim();
      push({ type: "heading", from, to: i + 1, level: atx[1].length, text });
      i += 1;
      continue;
    }

    if (HR.test(line)) {
      push({ type: "hr", from, to: i + 1 });
      i += 1;
      continue;
    }

    if (QUOTE.test(line)) {
      const inner = [];
      let lastBlank = false;
      while (i < lines.length) {
        const l = lines[i];
        if (QUOTE.test(l)) {
          const stripped = l.replace(QUOTE, "");
          inner.push(stripped);
          lastBlank = isBlank(stripped);
        } else if (!isBlank(l) && !lastBlank && inner.length > 0 && !interruptsParagraph(l) && !tableStart(lines, i)) {
          inner.push(l); // lazy continuation of the quoted paragraph
        } else {
          break;
        }
        i += 1;
      }
      push({ type: "quote", from, to: i, children: parseBlocks(inner).blocks });
      continue;
    }

    const item = listItem(line);
    if (item) {
      const list = { type: "list", from, ordered: item.ordered, start: item.start, items: [], loose: false };
      let current = item;
      while (current) {
        const itemLines = [current.content];
        let lastBlank = current.blank;
        i += 1;
        while (i < lines.length) {
          const l = lines[i];
          if (isBlank(l)) {
            itemLines.push("");
            lastBlank = true;
            i += 1;
            continue;
          }
          if (indentOf(l) >= current.width) {
            itemLines.push(stripCols(l, current.width));
            lastBlank = false;
            i += 1;
            continue;
          }
          if (!lastBlank && !interruptsParagraph(l) && !listItem(l) && !tableStart(lines, i)) {
            itemLines.push(l.trimStart()); // lazy continuation
            i += 1;
            continue;
          }
          break;
        }
        // Trailing blank lines belong between items, not inside one.
        let trailing = 0;
        while (itemLines.length > 0 && isBlank(itemLines[itemLines.length - 1])) {
          itemLines.pop();
          trailing += 1;
        }
        const parsed = parseBlocks(itemLines);
        if (parsed.blankBetween) list.loose = true;
        list.items.push(parsed.blocks);
        const next = i < lines.length ? listItem(lines[i]) : null;
        if (next && next.ordered === current.ordered && next.delim === current.delim && next.indent < current.width) {
          if (trailing > 0) list.loose = true;
          current = next;
        } else {
          if (trailing > 0) sawBlank = true;
          current = null;
        }
      }
      list.to = i;
      push(list);
      continue;
    }

    if (tableStart(lines, i)) {
      const header = tableCells(line);
      const align = tableAlign(lines[i + 1]);
      const rows = [];
      i += 2;
      while (i < lines.length && !isBlank(lines[i]) && !interruptsParagraph(lines[i])) {
        const cells = tableCells(lines[i]);
        rows.push(header.map((_, k) => cells[k] ?? ""));
        i += 1;
      }
      push({ type: "table", from, to: i, header, align, rows });
      continue;
    }

    // A paragraph: until a blank line or a block that interrupts it; a
    // setext underline turns it into a heading.
    const para = [line.trimStart()];
    i += 1;
    let heading = 0;
    while (i < lines.length) {
      const l = lines[i];
      if (isBlank(l)) break;
      const setext = SETEXT.exec(l);
      if (setext) {
        heading = setext[1][0] === "=" ? 1 : 2;
        i += 1;
        break;
      }
      if (interruptsParagraph(l) || tableStart(lines, i)) break;
      para.push(l.trimStart());
      i += 1;
    }
    const text = para.join("\n").replace(/[ \t]+$/, "");
    if (heading) push({ type: "heading", from, to: i, level: heading, text });
    else push({ type: "paragraph", from, to: i, text });
  }
  return { blocks, blankBetween };
}

// ---------------------------------------------------------------------------
// Inline
// ---------------------------------------------------------------------------

const ASCII_PUNCT = /[!-/:-@[-`{-~]/;
const UNICODE_PUNCT = /[\p{P}\p{S}]/u;
const WHITESPACE = /\s/u;
/** How far back an emphasis closer looks for its opener (bounds the cost of pathological input). */
const OPENER_LOOKBACK = 200;

/**
 * A link destination the page may open: an absolute http: or https: URL
 * (normalised), else null. `javascript:`, `data:`, relative and malformed
 * URLs are refused.
 * @param {string} dest
 * @returns {string|null}
 */
export function safeHref(dest) {
  let url;
  try {
    url = new URL(dest);
  } catch (_) {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

/** The end (exclusive) of a backtick code span opening at i, or -1. */
function codeSpanEnd(s, i) {
  let n = 0;
  while (s[i + n] === "`") n += 1;
  let j = i + n;
  while (j < s.length) {
    const k = s.indexOf("`", j);
    if (k < 0) return -1;
    let m = 0;
    while (s[k + m] === "`") m += 1;
    if (m === n) return k + m;
    j = k + m;
  }
  return -1;
}

/** The index of the `]` matching the `[` at i (escapes and code spans skipped), or -1. */
function closingBracket(s, i) {
  let depth = 0;
  for (let j = i; j < s.length; j++) {
    const c = s[j];
    if (c === "\\") {
      j += 1;
    } else if (c === "`") {
      const end = codeSpanEnd(s, j);
      if (end > 0) j = end - 1;
      else while (s[j + 1] === "`") j += 1;
    } else if (c === "[") {
      depth += 1;
    } else if (c === "]") {
      depth -= 1;
      if (depth === 0) return j;
    }
  }
  return -1;
}

/** Parses `(dest "title")` starting at i (the `(`): {dest, title, end} or null. */
function linkTail(s, i) {
  if (s[i] !== "(") return null;
  let j = i + 1;
  while (s[j] === " " || s[j] === "\t" || s[j] === "\n") j += 1;
  let dest = "";
  if (s[j] === "<") {
    const k = s.indexOf(">", j);
    if (k < 0 || s.slice(j, k).includes("\n")) return null;
    dest = s.slice(j + 1, k);
    j = k + 1;
  } else {
    let depth = 0;
    const start = j;
    while (j < s.length) {
      const c = s[j];
      if (c === "\\" && j + 1 < s.length) {
        j += 2;
        continue;
      }
      if (/[\s]/.test(c)) break;
      if (c === "(") depth += 1;
      if (c === ")") {
        if (depth === 0) break;
        depth -= 1;
      }
      j += 1;
    }
    dest = s.slice(start, j).replace(/\\([!-/:-@[-`{-~])/g, "$1");
  }
  while (s[j] === " " || s[j] === "\t" || s[j] === "\n") j += 1;
  let title = null;
  const q = s[j];
  if (q === '"' || q === "'" || q === "(") {
    const closeQ = q === "(" ? ")" : q;
    const k = s.indexOf(closeQ, j + 1);
    if (k < 0) return null;
    title = s.slice(j + 1, k);
    j = k + 1;
    while (s[j] === " " || s[j] === "\t" || s[j] === "\n") j += 1;
  }
  if (s[j] !== ")") return null;
  return { dest, title, end: j + 1 };
}

/** A bare http(s) URL starting at i (GFM's autolink extension): its end, or -1. */
function bareUrlEnd(s, i) {
  const m = /^https?:\/\/[^\s<>]+/i.exec(s.slice(i, i + 2048));
  if (!m) return -1;
  let url = m[0];
  for (;;) {
    const last = url[url.length - 1];
    if ("?!.,:*_~'\";".includes(last)) {
      url = url.slice(0, -1);
    } else if (last === ")" && (url.match(/\)/g) || []).length > (url.match(/\(/g) || []).length) {
      url = url.slice(0, -1);
    } else {
      break;
    }
  }
  return /^https?:\/\/[^/?#]+/i.test(url) ? i + url.length : -1;
}

/**
 * Tokenises inline Markdown: text, code, breaks, links, and emphasis
 * delimiter runs (resolved by {@link resolveEmphasis}).
 */
function tokenize(s, inLink) {
  const toks = [];
  let text = "";
  const flush = () => {
    if (text !== "") toks.push({ t: "text", s: text });
    text = "";
  };
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === "\\") {
      const next = s[i + 1];
      if (next === "\n") {
        flush();
        toks.push({ t: "br" });
        i += 2;
        continue;
      }
      if (next !== undefined && ASCII_PUNCT.test(next)) {
        text += next;
        i += 2;
        continue;
      }
      text += c;
      i += 1;
      continue;
    }
    if (c === "\n") {
      const hard = / {2,}$/.test(text);
      text = text.replace(/[ \t]+$/, "");
      flush();
      toks.push(hard ? { t: "br" } : { t: "text", s: "\n" });
      i += 1;
      while (s[i] === " " || s[i] === "\t") i += 1;
      continue;
    }
    if (c === "`") {
      const end = codeSpanEnd(s, i);
      let n = 0;
      while (s[i + n] === "`") n += 1;
      if (end < 0) {
        text += "`".repeat(n);
        i += n;
        continue;
      }
      let code = s.slice(i + n, end - n).replace(/\n/g, " ");
      if (code.length >= 2 && code[0] === " " && code[code.length - 1] === " " && code.trim() !== "") {
        code = code.slice(1, -1);
      }
      flush();
      toks.push({ t: "code", s: code });
      i = end;
      continue;
    }
    if (!inLink && (c === "[" || (c === "!" && s[i + 1] === "["))) {
      const open = c === "!" ? i + 1 : i;
      const close = closingBracket(s, open);
      const tail = close > 0 ? linkTail(s, close + 1) : null;
      if (tail) {
        flush();
        toks.push({
          t: "link",
          image: c === "!",
          href: safeHref(tail.dest),
          dest: tail.dest,
          title: tail.title,
          children: resolveEmphasis(tokenize(s.slice(open + 1, close), true)),
        });
        i = tail.end;
        continue;
      }
    }
    if (!inLink && c === "<") {
      const m = /^<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)>/.exec(s.slice(i, i + 2100));
      if (m) {
        flush();
        toks.push({ t: "link", href: safeHref(m[1]), dest: m[1], title: null, children: [{ t: "text", s: m[1] }] });
        i += m[0].length;
        continue;
      }
    }
    if (!inLink && (c === "h" || c === "H") && (i === 0 || /[\s(*_~]/.test(s[i - 1]))) {
      const end = bareUrlEnd(s, i);
      if (end > 0) {
        const url = s.slice(i, end);
        flush();
        toks.push({ t: "link", href: safeHref(url), dest: url, title: null, children: [{ t: "text", s: url }] });
        i = end;
        continue;
      }
    }
    if (c === "*" || c === "_" || c === "~") {
      let n = 0;
      while (s[i + n] === c) n += 1;
      const before = i === 0 ? " " : s[i - 1];
      const after = i + n >= s.length ? " " : s[i + n];
      const wsB = WHITESPACE.test(before);
      const wsA = WHITESPACE.test(after);
      const pB = UNICODE_PUNCT.test(before);
      const pA = UNICODE_PUNCT.test(after);
      const left = !wsA && (!pA || wsB || pB);
      const right = !wsB && (!pB || wsA || pA);
      let canOpen = left;
      let canClose = right;
      if (c === "_") {
        canOpen = left && (!right || pB);
        canClose = right && (!left || pA);
      }
      flush();
      toks.push({ t: "delim", ch: c, len: n, orig: n, canOpen, canClose });
      i += n;
      continue;
    }
    text += c;
    i += 1;
  }
  flush();
  return toks;
}

/** CommonMark's "process emphasis": pairs delimiter runs into em/strong/del nodes. */
function resolveEmphasis(toks) {
  let c = 0;
  while (c < toks.length) {
    const closer = toks[c];
    if (closer.t !== "delim" || !closer.canClose || closer.len === 0) {
      c += 1;
      continue;
    }
    let found = -1;
    for (let o = c - 1; o >= 0 && o >= c - OPENER_LOOKBACK; o--) {
      const op = toks[o];
      if (op.t !== "delim" || op.ch !== closer.ch || !op.canOpen || op.len === 0) continue;
      if (closer.ch === "~") {
        if (op.len === closer.len && op.len <= 2) {
          found = o;
          break;
        }
        continue;
      }
      const odd = (op.canClose || closer.canOpen) && (op.orig + closer.orig) % 3 === 0 && !(op.orig % 3 === 0 && closer.orig % 3 === 0);
      if (!odd) {
        found = o;
        break;
      }
    }
    if (found < 0) {
      c += 1;
      continue;
    }
    const op = toks[found];
    const use = closer.ch === "~" ? op.len : op.len >= 2 && closer.len >= 2 ? 2 : 1;
    const inner = toks.splice(found + 1, c - found - 1);
    const tag = closer.ch === "~" ? "del" : use === 2 ? "strong" : "em";
    toks.splice(found + 1, 0, { t: "span", tag, children: inner });
    op.len -= use;
    closer.len -= use;
    c = found + 2;
    if (op.len === 0) {
      toks.splice(found, 1);
      c -= 1;
    }
    if (closer.len === 0) toks.splice(c, 1);
  }
  return toks;
}

/** Appends the DOM of inline tokens to `parent`. */
function appendInline(parent, toks) {
  for (const tok of toks) {
    switch (tok.t) {
      case "text":
        parent.appendChild(document.createTextNode(tok.s));
        break;
      case "delim":
        if (tok.len > 0) parent.appendChild(document.createTextNode(tok.ch.repeat(tok.len)));
        break;
      case "br":
        parent.appendChild(document.createElement("br"));
        break;
      case "code": {
        const code = document.createElement("code");
        code.textContent = tok.s;
        parent.appendChild(code);
        break;
      }
      case "span": {
        const el = document.createElement(tok.tag);
        appendInline(el, tok.children);
        parent.appendChild(el);
        break;
      }
      case "link": {
        let el;
        if (tok.href) {
          el = document.createElement("a");
          el.href = tok.href;
          el.target = "_blank";
          el.rel = "noopener noreferrer";
          if (tok.title) el.title = tok.title;
          if (tok.image) el.className = "image-link";
        } else {
          el = document.createElement("span");
          el.className = "link-blocked";
          el.title = "Link not opened: only http and https links are";
        }
        appendInline(el, tok.children);
        if (tok.image && el.childNodes.length === 0) el.textContent = "image";
        parent.appendChild(el);
        break;
      }
      default:
        break;
    }
  }
}

/**
 * Renders inline Markdown `text` into `parent` (text nodes and elements only).
 * @param {Node} parent
 * @param {string} text
 */
export function renderInline(parent, text) {
  appendInline(parent, resolveEmphasis(tokenize(text, false)));
}

// ---------------------------------------------------------------------------
// Block DOM
// ---------------------------------------------------------------------------

/** Model headings sit under the page's h2 per turn: `#` and `##` become h3, `###` h4, … */
const headingTag = (level) => `h${Math.min(6, Math.max(3, level + 1))}`;

function codeBlock(block) {
  const wrap = document.createElement("div");
  wrap.className = "code-block";
  const head = document.createElement("div");
  head.className = "code-head";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = block.lang || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "ghost small copy-code";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", block.lang ? `Copy ${block.lang} code` : "Copy code");
  head.append(label, copy);
  const pre = document.createElement("pre");
  pre.className = "code";
  const code = document.createElement("code");
  if (block.lang) code.dataset.lang = block.lang;
  code.textContent = block.text;
  pre.appendChild(code);
  wrap.append(head, pre);
  return wrap;
}

function table(block) {
  const wrap = document.createElement("div");
  wrap.className = "table-wrap";
  const tableEl = document.createElement("table");
  const thead = document.createElement("thead");
  const tr = document.createElement("tr");
  block.header.forEach((cell, k) => {
    const th = document.createElement("th");
    th.scope = "col";
    if (block.align[k]) th.style.textAlign = block.align[k];
    renderInline(th, cell);
    tr.appendChild(th);
  });
  thead.appendChild(tr);
  tableEl.appendChild(thead);
  if (block.rows.length > 0) {
    const tbody = document.createElement("tbody");
    for (const row of block.rows) {
      const r = document.createElement("tr");
      row.forEach((cell, k) => {
        const td = document.createElement("td");
        if (block.align[k]) td.style.textAlign = block.align[k];
        renderInline(td, cell);
        r.appendChild(td);
      });
      tbody.appendChild(r);
    }
    tableEl.appendChild(tbody);
  }
  wrap.appendChild(tableEl);
  return wrap;
}

/**
 * The DOM node of one block.
 * @param {object} block from {@link parseBlocks}
 * @param {boolean} [tight] inside a tight list item: paragraphs without <p>
 * @returns {Node}
 */
export function renderBlock(block, tight = false) {
  switch (block.type) {
    case "heading": {
      const h = document.createElement(headingTag(block.level));
      h.className = `md-h${block.level}`;
      renderInline(h, block.text);
      return h;
    }
    case "hr":
      return document.createElement("hr");
    case "code":
      return codeBlock(block);
    case "table":
      return table(block);
    case "quote": {
      const q = document.createElement("blockquote");
      for (const child of block.children) q.appendChild(renderBlock(child));
      return q;
    }
    case "list": {
      const list = document.createElement(block.ordered ? "ol" : "ul");
      if (block.ordered && block.start !== 1) list.start = block.start;
      for (const item of block.items) {
        const li = document.createElement("li");
        for (const child of item) li.appendChild(renderBlock(child, !block.loose));
        list.appendChild(li);
      }
      return list;
    }
    default: {
      if (tight) {
        const span = document.createElement("span");
        span.className = "tight";
        renderInline(span, block.text);
        return span;
      }
      const p = document.createElement("p");
      renderInline(p, block.text);
      return p;
    }
  }
}

/**
 * Renders a whole Markdown text (not streaming) into a fragment.
 * @param {string} text
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  for (const block of parseBlocks(sourceLines(text)).blocks) frag.appendChild(renderBlock(block));
  return frag;
}

// ---------------------------------------------------------------------------
// Patching: make an existing node look like a freshly rendered one
// ---------------------------------------------------------------------------

/** Makes `old` equal to `fresh` in place where it can; returns the node that stays. */
function patch(old, fresh) {
  if (old.nodeType !== fresh.nodeType || old.nodeName !== fresh.nodeName) {
    old.replaceWith(fresh);
    return fresh;
  }
  if (old.nodeType === Node.TEXT_NODE) {
    if (old.data !== fresh.data) {
      if (fresh.data.startsWith(old.data)) old.appendData(fresh.data.slice(old.data.length));
      else old.data = fresh.data;
    }
    return old;
  }
  // Attributes (but `tabindex`, which the page sets on blocks that scroll).
  for (const attr of [...old.attributes]) {
    if (!fresh.hasAttribute(attr.name) && attr.name !== "tabindex") old.removeAttribute(attr.name);
  }
  for (const attr of fresh.attributes) {
    if (old.getAttribute(attr.name) !== attr.value) old.setAttribute(attr.name, attr.value);
  }
  patchChildren(old, [...fresh.childNodes], 0);
  return old;
}

/** Makes `parent`'s children from index `from` on equal `fresh` (patched in place). */
function patchChildren(parent, fresh, from) {
  const kids = parent.childNodes;
  let k = 0;
  for (; k < fresh.length; k++) {
    const old = kids[from + k];
    if (old) patch(old, fresh[k]);
    else parent.appendChild(fresh[k]);
  }
  while (kids.length > from + k) parent.lastChild.remove();
}

// ---------------------------------------------------------------------------
// The streaming view
// ---------------------------------------------------------------------------

/** Blocks are kept in groups of this many (see {@link MarkdownView}). */
const CHUNK = 32;

/**
 * Shows a growing Markdown text in a container element. Call
 * {@link MarkdownView#append} with each new piece and
 * {@link MarkdownView#render} once per animation frame.
 *
 * The container holds the blocks in `div.md-chunk` groups of {@link CHUNK}:
 * the final blocks, then (in the last group) the open block's nodes. A
 * block becomes final where it stands (it is never moved or re-created),
 * and the browser's layout of a frame walks a few dozen children, not
 * every block of a long answer.
 */
export class MarkdownView {
  /**
   * @param {HTMLElement} container
   * @param {object} [hooks]
   * @param {(el: Node) => void} [hooks.onCommit] a block was rendered for good
   */
  constructor(container, hooks = {}) {
    this.container = container;
    this.hooks = hooks;
    /** The whole source text. */
    this.source = "";
    /** Source offset where the open (not yet final) part begins. */
    this.committedChars = 0;
    /** The last group, and how many final blocks it holds (the open nodes follow them). */
    this.chunk = null;
    this.inChunk = 0;
    this.dirty = false;
  }

  /** Appends streamed text (rendered at the next {@link render}). */
  append(text) {
    if (text === "") return;
    this.source += text;
    this.dirty = true;
  }

  /** Replaces the whole text and renders it from scratch. */
  reset(text) {
    this.source = text;
    this.committedChars = 0;
    this.chunk = null;
    this.inChunk = 0;
    this.container.replaceChildren();
    this.dirty = true;
    this.render();
  }

  /** The blocks that are final, in order. */
  committed() {
    return [...this.container.children].flatMap((c) => (c === this.chunk
      ? [...c.childNodes].slice(0, this.inChunk)
      : [...c.childNodes]));
  }

  /** The open block's nodes (re-rendered on each update). */
  openNodes() {
    return this.chunk ? [...this.chunk.childNodes].slice(this.inChunk) : [];
  }

  /** The group the open nodes live in (a new one when the last is full). */
  openChunk() {
    if (this.chunk === null || this.inChunk >= CHUNK) {
      const next = document.createElement("div");
      next.className = "md-chunk";
      this.container.appendChild(next);
      if (this.chunk !== null) {
        // Only the open nodes move (they are re-rendered anyway); keep a focus inside them.
        const open = this.openNodes();
        const focused = document.activeElement;
        const hadFocus = focused instanceof HTMLElement && open.some((n) => n.contains(focused));
        next.append(...open);
        if (hadFocus) focused.focus({ preventScroll: true });
      }
      this.chunk = next;
      this.inChunk = 0;
    }
    return this.chunk;
  }

  /** The first open node becomes final (`fresh` is its final rendering). */
  commit(fresh) {
    const chunk = this.openChunk();
    const old = chunk.childNodes[this.inChunk];
    const node = old ? patch(old, fresh) : chunk.appendChild(fresh);
    this.inChunk += 1;
    this.hooks.onCommit?.(node);
  }

  /**
   * Renders what changed since the last call: commits the blocks that
   * complete lines have closed, then re-renders the open tail.
   * @param {boolean} [final] the text is complete: everything is committed
   */
  render(final = false) {
    if (!this.dirty && !final) return;
    this.dirty = false;
    const tail = this.source.slice(this.committedChars);
    const lastNl = tail.lastIndexOf("\n");
    if (lastNl >= 0) {
      const complete = tail.slice(0, lastNl).split("\n");
      const { blocks } = parseBlocks(complete);
      if (blocks.length >= 2) {
        for (const b of blocks.slice(0, -1)) this.commit(renderBlock(b));
        // The open part starts at the first line of the last block.
        const startLine = blocks[blocks.length - 1].from;
        let offset = 0;
        for (let l = 0; l < startLine; l++) offset += complete[l].length + 1;
        this.committedChars += offset;
      }
    }
    const { blocks } = parseBlocks(sourceLines(this.source.slice(this.committedChars)));
    const fresh = blocks.map((b) => renderBlock(b));
    if (final) {
      for (const node of fresh) this.commit(node);
      const chunk = this.chunk;
      if (chunk) while (chunk.childNodes.length > this.inChunk) chunk.lastChild.remove();
      this.committedChars = this.source.length;
    } else if (fresh.length > 0 || this.chunk !== null) {
      patchChildren(this.openChunk(), fresh, this.inChunk);
    }
  }
}
