// The turns of the conversation: a user turn (text and images) and an
// assistant turn that renders itself (thinking section, Markdown answer,
// status note, error box, Copy/Retry, small print) from protocol frames.

import { el, button, copyText, flashCopied } from "./dom.js";
import { MarkdownView } from "./markdown.js";

/** The states of an assistant turn (its `data-state`). */
export const TurnState = Object.freeze({
  /** Sent; nothing received yet (or only retries). */
  WAITING: "waiting",
  /** Text is arriving. */
  STREAMING: "streaming",
  DONE: "done",
  /** The user stopped it. */
  STOPPED: "stopped",
  /** It ended with an error frame. */
  ERROR: "error",
  /** The connection dropped and it could not be resumed. */
  INTERRUPTED: "interrupted",
});

/** Whether a turn in `state` is still waiting for frames. */
export function isLive(state) {
  return state === TurnState.WAITING || state === TurnState.STREAMING;
}

/** Headlines of the gateway's error codes (PROTOCOL.md §3.2). */
export const ERROR_TITLES = Object.freeze({
  bad_request: "The gateway rejected the request",
  unknown_model: "Unknown model",
  busy: "Too many answers at once",
  upstream_rejected: "The model provider rejected the request",
  upstream_unavailable: "The model provider is unavailable",
  upstream_broken: "The answer broke off",
  upstream_timeout: "The model provider timed out",
  resume_unavailable: "The answer could not be resumed",
});

/** What a screen reader hears for one finished block of an answer. */
function speechOf(node) {
  if (!(node instanceof Element)) return node.textContent || "";
  if (node.classList.contains("code-block")) {
    const lang = node.querySelector("code")?.dataset.lang;
    const lines = (node.querySelector("code")?.textContent || "").split("\n").length - 1;
    return `Code block${lang ? ` in ${lang}` : ""}, ${lines} line${lines === 1 ? "" : "s"}.`;
  }
  if (node.classList.contains("table-wrap")) {
    const rows = node.querySelectorAll("tbody tr").length;
    const cols = [...node.querySelectorAll("thead th")].map((th) => th.textContent.trim()).join(", ");
    return `Table with ${rows} row${rows === 1 ? "" : "s"}: ${cols}.`;
  }
  if (node.tagName === "UL" || node.tagName === "OL") {
    return [...node.children].map((li) => li.textContent.trim()).join("\n");
  }
  if (node.tagName === "HR") return "";
  return node.textContent;
}

/**
 * Code blocks and tables in `root` that scroll sideways become focusable
 * (so the keyboard can scroll them); the others are not tab stops.
 */
function markScrollablesIn(root) {
  if (!(root instanceof Element)) return;
  const boxes = root.matches("pre.code, .table-wrap") ? [root] : root.querySelectorAll("pre.code, .table-wrap");
  for (const box of boxes) {
    if (box.scrollWidth > box.clientWidth + 1) box.tabIndex = 0;
    else box.removeAttribute("tabindex");
  }
}

/** A paragraph still being written is announced in pieces of at least this many characters. */
const MIN_PIECE_CHARS = 40;

/** The end (exclusive) of the last whole sentence in `text` after `from`, or -1. */
function sentenceEnd(text, from) {
  const re = /[.!?…](?=\s)|\n/g;
  re.lastIndex = from;
  let end = -1;
  let m;
  while ((m = re.exec(text)) !== null) end = m.index + 1;
  return end;
}

// ---------------------------------------------------------------------------

/** A user's message: its text (shown as typed) and attached images. */
export class UserTurn {
  /**
   * @param {{text: string, images?: Array<{name: string, type: string, url: string|null}>}} data
   */
  constructor({ text, images = [] }) {
    this.role = "user";
    this.text = text;
    this.images = images;
    this.node = el("li", "turn user");
    this.node.dataset.role = "user";
    this.node.append(el("h2", "visually-hidden", "You said:"));
    const body = el("div", "turn-body");
    if (images.length > 0) {
      const strip = el("div", "turn-images");
      for (const img of images) {
        if (img.url) {
          const thumb = el("img", "thumb");
          thumb.src = img.url;
          thumb.alt = `Attached image: ${img.name}`;
          strip.append(thumb);
        } else {
          strip.append(el("span", "thumb missing", `${img.name} (not kept after reload)`));
        }
      }
      body.append(strip);
    }
    if (text !== "") body.append(el("div", "user-text", text));
    this.node.append(body);
  }

  /** The chat message for this turn: a string, or content parts with images. */
  message() {
    const images = this.images.filter((i) => i.url);
    if (images.length === 0) return { role: "user", content: this.text };
    const parts = [];
    if (this.text !== "") parts.push({ type: "text", text: this.text });
    for (const i of images) parts.push({ type: "image_url", image_url: { url: i.url } });
    return { role: "user", content: parts };
  }

  /** The message without its images (to fit a frame). */
  textMessage() {
    return { role: "user", content: this.text };
  }

  toJSON() {
    return { role: "user", text: this.text, images: this.images };
  }
}

// ---------------------------------------------------------------------------

/**
 * An assistant answer. The app feeds it frames ({@link AssistantTurn#onFrame})
 * and calls {@link AssistantTurn#render} once per animation frame.
 */
export class AssistantTurn {
  /**
   * @param {object} hooks
   * @param {(turn: AssistantTurn) => void} hooks.onRetry the Retry button
   * @param {(text: string) => void} hooks.onSpeak a piece of answer to announce
   */
  constructor(hooks) {
    this.role = "assistant";
    this.hooks = hooks;
    /** The chat's id, its session and the last seq applied to this turn. */
    this.id = null;
    this.session = null;
    this.seq = 0;
    /** The answer's Markdown source and the reasoning text, as received. */
    this.content = "";
    this.reasoning = "";
    this.state = TurnState.WAITING;
    this.meta = { model: null, upstream: null, retry: null, usage: null, note: null };
    this.error = null;
    /** The connection is down and the answer waits to be resumed. */
    this.paused = false;
    this.thinkingStarted = 0;
    this.thinkingMs = null;
    this.userToggledThinking = false;
    /** No announcements (a turn restored from storage). */
    this.silent = false;
    this.spoken = { node: null, chars: 0 };
    this.build();
  }

  build() {
    const li = el("li", "turn assistant");
    li.dataset.role = "assistant";
    li.append(el("h2", "visually-hidden", "Assistant:"));

    const thinking = el("details", "thinking");
    thinking.hidden = true;
    const summary = el("summary", "thinking-summary");
    const label = el("span", "thinking-label", "Thinking…");
    summary.append(label);
    summary.addEventListener("click", () => { this.userToggledThinking = true; });
    const thinkingBody = el("div", "thinking-body markdown");
    thinking.append(summary, thinkingBody);

    const body = el("div", "turn-body markdown");
    const note = el("p", "turn-note");
    note.hidden = true;
    const errorBox = el("div", "turn-error");
    errorBox.hidden = true;
    const footer = el("div", "turn-footer");
    const actions = el("div", "turn-actions");
    const copy = button("ghost small copy", "Copy", "Copy this answer");
    copy.hidden = true;
    actions.append(copy);
    const meta = el("div", "turn-meta");
    footer.append(actions, meta);
    li.append(thinking, body, note, errorBox, footer);

    copy.addEventListener("click", async () => flashCopied(copy, await copyText(this.content)));
    // Code blocks' copy buttons, by delegation: they are re-rendered while streaming.
    li.addEventListener("click", async (ev) => {
      const btn = ev.target instanceof Element ? ev.target.closest("button.copy-code") : null;
      if (!btn) return;
      const code = btn.closest(".code-block")?.querySelector("pre code");
      if (code) flashCopied(btn, await copyText(code.textContent));
    });

    this.node = li;
    this.thinking = thinking;
    this.thinkingLabel = label;
    this.body = body;
    this.noteNode = note;
    this.errorNode = errorBox;
    this.actions = actions;
    this.copyButton = copy;
    this.retryButton = null;
    this.metaNode = meta;
    this.view = new MarkdownView(body, {
      onCommit: (node) => {
        this.speakBlock(node);
        markScrollablesIn(node);
      },
    });
    this.thinkingView = new MarkdownView(thinkingBody);
  }

  /** Starts (or restarts, for Retry) the turn as chat `id` of `session`. */
  begin(id, session, model) {
    this.id = id;
    this.session = session;
    this.seq = 0;
    this.content = "";
    this.reasoning = "";
    this.state = TurnState.WAITING;
    this.meta = { model: model || null, upstream: null, retry: null, usage: null, note: null };
    this.error = null;
    this.paused = false;
    this.thinkingStarted = 0;
    this.thinkingMs = null;
    this.userToggledThinking = false;
    this.spoken = { node: null, chars: 0 };
    this.view.reset("");
    this.thinkingView.reset("");
    this.thinking.hidden = true;
    this.errorNode.hidden = true;
    this.errorNode.replaceChildren();
    this.setRetryable(false);
    this.node.dataset.turnId = id;
    this.refresh();
  }

  /**
   * Applies a non-terminal frame (start, reasoning, delta, retry).
   * @returns {boolean} whether the turn needs rendering
   */
  onFrame(frame) {
    if (Number.isInteger(frame.seq)) this.seq = frame.seq;
    if (!isLive(this.state)) return false; // stopped: show no more
    switch (frame.type) {
      case "start":
        if (typeof frame.model === "string") this.meta.model = frame.model;
        this.meta.upstream = typeof frame.upstream === "string" ? frame.upstream : null;
        this.meta.retry = null;
        if (this.state === TurnState.WAITING) this.state = TurnState.STREAMING;
        this.refresh();
        return false;
      case "retry":
        this.meta.retry = { attempt: frame.attempt, reason: typeof frame.reason === "string" ? frame.reason : "" };
        this.refresh();
        return false;
      case "reasoning":
        if (typeof frame.content !== "string" || frame.content === "") return false;
        if (this.reasoning === "") {
          this.thinkingStarted = performance.now();
          this.thinking.hidden = false;
          this.thinking.open = true;
        }
        this.reasoning += frame.content;
        this.thinkingView.append(frame.content);
        this.meta.retry = null;
        this.state = TurnState.STREAMING;
        this.refresh();
        return true;
      case "delta":
        if (typeof frame.content !== "string") return false;
        if (this.thinkingStarted && this.thinkingMs === null) this.thinkingMs = performance.now() - this.thinkingStarted;
        this.content += frame.content;
        this.view.append(frame.content);
        if (this.state !== TurnState.STREAMING || this.meta.retry) {
          this.state = TurnState.STREAMING;
          this.meta.retry = null;
          this.refresh();
        }
        return true;
      default:
        return false;
    }
  }

  /** Renders text received since the last call (once per animation frame). */
  render() {
    this.thinkingView.render();
    this.view.render();
    for (const node of this.view.openNodes()) markScrollablesIn(node);
    this.speakOpenSentences();
    this.updateBody();
  }

  /** Code blocks and tables that scroll sideways take the keyboard focus (all of them: after a resize). */
  markScrollables() {
    markScrollablesIn(this.body);
    markScrollablesIn(this.thinking);
  }

  /**
   * Ends the turn in `state` (done, stopped, error, interrupted): renders
   * what it has for good and collapses the thinking section.
   */
  finish(state, { note = null, usage = null } = {}) {
    if (!isLive(this.state) && state !== TurnState.STOPPED) return;
    this.state = state;
    this.paused = false;
    this.meta.retry = null;
    if (note) this.meta.note = note;
    if (usage && typeof usage === "object") this.meta.usage = usage;
    if (this.thinkingStarted && this.thinkingMs === null) this.thinkingMs = performance.now() - this.thinkingStarted;
    this.thinkingView.render(true);
    this.view.render(true);
    this.markScrollables();
    if (!this.userToggledThinking) this.thinking.open = false;
    this.refresh();
  }

  /** Shows an error frame's title, message and code; `retryable` offers Retry. */
  showError(frame, retryable) {
    const box = this.errorNode;
    box.replaceChildren();
    if (frame) {
      box.append(el("strong", "error-title", ERROR_TITLES[frame.code] || "Error"));
      box.append(el("span", "error-message", typeof frame.message === "string" ? frame.message : ""));
      if (typeof frame.code === "string") box.append(el("code", "error-code", frame.code));
      box.hidden = false;
      this.error = { code: frame.code, message: frame.message, retryable: frame.retryable === true };
    }
    this.setRetryable(retryable);
  }

  /** Adds or removes the Retry button. */
  setRetryable(on) {
    if (on && !this.retryButton) {
      const btn = button("small retry", "Retry", "Retry this answer");
      btn.addEventListener("click", () => this.hooks.onRetry(this));
      this.actions.prepend(btn);
      this.retryButton = btn;
    } else if (!on && this.retryButton) {
      this.retryButton.remove();
      this.retryButton = null;
    }
  }

  /** The connection dropped (`on`) or came back with the answer resuming. */
  setPaused(on) {
    this.paused = on;
    this.refresh();
  }

  /** Updates state attributes, the note and the small print. */
  refresh() {
    const li = this.node;
    li.dataset.state = this.state;
    const live = isLive(this.state);
    li.setAttribute("aria-busy", live ? "true" : "false");

    const m = this.meta;
    const parts = [];
    if (m.model) parts.push(m.model);
    if (m.upstream) parts.push(`via ${m.upstream}`);
    if (m.usage && Number.isFinite(m.usage.total_tokens)) parts.push(`${m.usage.total_tokens} tokens`);
    this.metaNode.textContent = parts.join(" · ");

    let note = m.note;
    let kind = "";
    if (this.state === TurnState.STOPPED) note = "stopped";
    else if (this.state === TurnState.INTERRUPTED) {
      note = m.note || "interrupted";
      kind = "warn";
    } else if (live && this.paused) {
      note = "connection lost — the answer will continue when it is back";
      kind = "calm";
    } else if (live && m.retry) {
      note = `upstream busy, retrying ${m.retry.attempt}…`;
    }
    this.noteNode.textContent = note || "";
    this.noteNode.hidden = !note;
    this.noteNode.title = live && m.retry ? m.retry.reason : "";
    this.noteNode.className = `turn-note ${kind}`.trim();

    if (this.reasoning !== "") {
      this.thinking.hidden = false;
      let label = "Thinking…";
      if (!live) label = this.thinkingMs !== null ? `Thought for ${Math.max(1, Math.round(this.thinkingMs / 1000))} s` : "Thoughts";
      if (this.thinkingLabel.textContent !== label) this.thinkingLabel.textContent = label;
    }
    this.updateBody();
  }

  updateBody() {
    const pending = isLive(this.state) && this.content === "" && this.reasoning === "";
    this.body.classList.toggle("pending", pending);
    this.body.hidden = this.content === "" && !pending;
    this.copyButton.hidden = this.content === "";
  }

  // -- announcements ------------------------------------------------------------

  speak(text) {
    const t = text.trim();
    if (t !== "" && !this.silent) this.hooks.onSpeak(t);
  }

  /** A block of the answer is final: announce what was not announced of it. */
  speakBlock(node) {
    const text = speechOf(node);
    if (this.spoken.node === node) {
      this.speak(text.slice(this.spoken.chars));
    } else {
      this.speak(text);
    }
    this.spoken = { node: null, chars: 0 };
  }

  /** Announces whole sentences of a long paragraph still being written. */
  speakOpenSentences() {
    const open = this.view.openNodes()[0];
    if (!(open instanceof HTMLParagraphElement)) return;
    if (this.spoken.node !== open) this.spoken = { node: open, chars: 0 };
    const text = open.textContent;
    const end = sentenceEnd(text, this.spoken.chars);
    if (end - this.spoken.chars >= MIN_PIECE_CHARS) {
      this.speak(text.slice(this.spoken.chars, end));
      this.spoken.chars = end;
    }
  }

  // -- persistence --------------------------------------------------------------

  toJSON() {
    return {
      role: "assistant",
      id: this.id,
      session: this.session,
      seq: this.seq,
      content: this.content,
      reasoning: this.reasoning,
      state: this.state,
      meta: { model: this.meta.model, upstream: this.meta.upstream, usage: this.meta.usage, note: this.meta.note },
      error: this.error,
      retryable: this.retryButton !== null,
      thinkingMs: this.thinkingMs,
    };
  }

  /** A turn rebuilt from {@link toJSON}'s data, rendered, without announcements. */
  static restore(data, hooks) {
    const turn = new AssistantTurn(hooks);
    turn.silent = true;
    turn.id = typeof data.id === "string" ? data.id : null;
    turn.session = typeof data.session === "string" ? data.session : null;
    turn.seq = Number.isInteger(data.seq) ? data.seq : 0;
    turn.content = typeof data.content === "string" ? data.content : "";
    turn.reasoning = typeof data.reasoning === "string" ? data.reasoning : "";
    turn.state = Object.values(TurnState).includes(data.state) ? data.state : TurnState.INTERRUPTED;
    const meta = data.meta && typeof data.meta === "object" ? data.meta : {};
    turn.meta = { model: meta.model ?? null, upstream: meta.upstream ?? null, retry: null, usage: meta.usage ?? null, note: meta.note ?? null };
    turn.thinkingMs = Number.isFinite(data.thinkingMs) ? data.thinkingMs : null;
    if (turn.id) turn.node.dataset.turnId = turn.id;
    const live = isLive(turn.state);
    turn.view.reset(turn.content);
    if (!live) turn.view.render(true);
    turn.thinkingView.reset(turn.reasoning);
    if (!live) turn.thinkingView.render(true);
    turn.thinking.open = live && turn.reasoning !== "";
    if (data.error && typeof data.error === "object") turn.showError(data.error, data.retryable === true);
    else if (data.retryable === true) turn.setRetryable(true);
    turn.refresh();
    turn.silent = false;
    return turn;
  }
}
