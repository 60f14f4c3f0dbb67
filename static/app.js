// netfly demo chat page: the wiring. The protocol client is
// netfly-client.js, Markdown rendering markdown.js, the turns turn.js,
// image attach attachments.js, the saved conversation storage.js.
// No framework, no build step, no network besides the page's own host.

import { NetflyClient, Status } from "./netfly-client.js";
import { UserTurn, AssistantTurn, TurnState, ERROR_TITLES, isLive } from "./turn.js";
import { Attachments } from "./attachments.js";
import { ConversationStore } from "./storage.js";
import { el, button, formatBytes } from "./dom.js";

/** Messages per chat frame, at most (PROTOCOL.md §3.1). */
const MAX_MESSAGES = 256;
/** The largest client frame when hello names none (`hello.max_frame_bytes`). */
const DEFAULT_MAX_FRAME_BYTES = 1048576;
/** Distance from the bottom (px) within which auto-scroll stays on. */
const STICK_PX = 48;
/** Announced answer pieces kept in the live region (older ones are removed). */
const LIVE_PIECES = 12;

/** What the status pill says in each connection state. */
const STATUS_TEXT = Object.freeze({
  [Status.CONNECTING]: "connecting…",
  [Status.CONNECTED]: "connected",
  [Status.RECONNECTING]: "reconnecting…",
  [Status.OFFLINE]: "offline",
});

/**
 * `?perf` on the page URL: the main-thread time of each rendered frame
 * (`renderMs`, of which `layoutMs` is the layout read for auto-scroll) is
 * collected in `window.__netflyPerf`.
 */
const PERF = new URLSearchParams(window.location.search).has("perf");

const bytesOf = (text) => new TextEncoder().encode(text).length;

class ChatApp {
  constructor(doc) {
    const $ = (id) => doc.getElementById(id);
    this.dom = {
      model: $("model"),
      status: $("status"),
      statusText: $("status-text"),
      statusDetail: $("status-detail"),
      reconnectNow: $("reconnect-now"),
      newChat: $("new-chat"),
      system: $("system-prompt"),
      temperature: $("temperature"),
      notice: $("notice"),
      scroller: $("main"),
      empty: $("empty"),
      messages: $("messages"),
      jump: $("jump"),
      composer: $("composer"),
      prompt: $("prompt"),
      send: $("send"),
      announcer: $("announcer"),
      answerLive: $("answer-live"),
      composerError: $("composer-error"),
    };
    /** Every turn in order (UserTurn | AssistantTurn). */
    this.turns = [];
    /** Chats whose terminal frame has not arrived: id → {turn, chat}. */
    this.inFlight = new Map();
    /** The entry the composer waits on (Stop acts on it), or null. */
    this.active = null;
    this.maxFrameBytes = DEFAULT_MAX_FRAME_BYTES;
    this.stick = true;
    this.renderQueued = new Set();
    this.renderScheduled = false;
    this.lastStatus = null;
    this.wasConnected = false;
    if (PERF) window.__netflyPerf = { renderMs: [], layoutMs: [] };

    this.client = new NetflyClient();
    this.client.on("status", (s) => this.showStatus(s));
    this.client.on("hello", (hello) => this.onHello(hello));
    this.client.on("error", (frame) => this.showNotice(`${ERROR_TITLES[frame.code] || "Error"}: ${frame.message || frame.code || "unknown error"}`));
    this.store = new ConversationStore(() => this.snapshot());
    this.attachments = new Attachments({
      list: $("attachments"),
      input: $("file-input"),
      button: $("attach"),
      error: $("attach-error"),
      dropZone: $("composer"),
      focusAfterRemove: $("prompt"),
    }, () => this.updateComposer());
    this.turnHooks = {
      onRetry: (turn) => this.retry(turn),
      onSpeak: (text) => this.say(text),
    };
    this.bindUi();
  }

  async start() {
    await this.store.open();
    this.restore();
    this.client.connect();
    this.updateComposer();
    // Ready to type (not on touch screens, where focus opens the keyboard).
    if (!window.matchMedia("(pointer: coarse)").matches) this.dom.prompt.focus();
  }

  // -- UI events ---------------------------------------------------------------

  bindUi() {
    const d = this.dom;
    d.composer.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (this.active) this.stop();
      else this.sendPrompt();
    });
    d.prompt.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        if (!this.active) this.sendPrompt();
      }
    });
    d.prompt.addEventListener("input", () => {
      this.autoGrow();
      this.updateComposer();
    });
    d.prompt.addEventListener("paste", (ev) => this.attachments.onPaste(ev));
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && this.active && !ev.defaultPrevented) {
        ev.preventDefault();
        this.stop();
      }
    });
    d.reconnectNow.addEventListener("click", () => this.client.reconnectNow());
    d.newChat.addEventListener("click", () => this.newChat());
    d.scroller.addEventListener("scroll", () => {
      this.stick = this.distanceFromBottom() < STICK_PX;
      if (this.stick) d.jump.hidden = true;
    });
    d.jump.addEventListener("click", () => {
      this.stick = true;
      this.scrollToBottom();
      d.jump.hidden = true;
      d.prompt.focus();
    });
    d.notice.addEventListener("click", (ev) => {
      if (ev.target instanceof Element && ev.target.closest(".notice-close")) {
        d.notice.hidden = true;
        d.prompt.focus();
      }
    });
    d.model.addEventListener("change", () => this.store.schedule());
    d.system.addEventListener("change", () => this.store.schedule());
    d.temperature.addEventListener("change", () => this.store.schedule());
    window.addEventListener("pagehide", () => this.store.saveNow());
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const t of this.turns) if (t.role === "assistant") t.markScrollables();
      }, 100);
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "hidden") this.store.saveNow();
    });
  }

  autoGrow() {
    const p = this.dom.prompt;
    p.style.height = "auto";
    p.style.height = `${Math.min(p.scrollHeight + 2, Math.round(window.innerHeight * 0.4))}px`;
  }

  /** Send/Stop button and Retry buttons follow the connection and the active answer. */
  updateComposer() {
    const d = this.dom;
    const ready = this.client.ready;
    if (this.active) {
      d.send.textContent = "Stop";
      d.send.dataset.mode = "stop";
      d.send.setAttribute("aria-disabled", "false");
      d.send.setAttribute("aria-label", "Stop the answer");
      d.send.classList.add("stop");
    } else {
      const empty = d.prompt.value.trim() === "" && this.attachments.items.length === 0;
      d.send.textContent = "Send";
      d.send.dataset.mode = "send";
      // aria-disabled, not disabled: a focused button keeps its focus.
      d.send.setAttribute("aria-disabled", String(!ready || empty));
      d.send.setAttribute("aria-label", ready ? "Send message" : "Send message (waiting for connection)");
      d.send.classList.remove("stop");
    }
    for (const t of this.turns) {
      if (t.retryButton) t.retryButton.setAttribute("aria-disabled", String(!ready || this.active !== null));
    }
  }

  // -- Connection ----------------------------------------------------------------

  showStatus({ state, retryInSeconds, trying }) {
    const d = this.dom;
    d.status.dataset.state = state;
    const text = STATUS_TEXT[state] || state;
    if (d.statusText.textContent !== text) d.statusText.textContent = text;
    // The countdown is shown, not announced (it would be read every second).
    let more = "";
    if (state === Status.OFFLINE) more = trying ? "trying…" : `retrying in ${retryInSeconds || 0} s`;
    if (d.statusDetail.textContent !== more) d.statusDetail.textContent = more;
    d.statusDetail.hidden = more === "";
    const hideRetry = state !== Status.OFFLINE;
    if (hideRetry && document.activeElement === d.reconnectNow) d.prompt.focus();
    d.reconnectNow.hidden = hideRetry;
    if (state !== this.lastStatus) {
      const resuming = [...this.inFlight.values()].some((e) => isLive(e.turn.state));
      if (state === Status.CONNECTED && this.wasConnected) {
        this.announce(resuming ? "Reconnected. The answer continues." : "Reconnected.");
      } else if (state === Status.RECONNECTING && this.lastStatus === Status.CONNECTED) {
        this.announce(resuming ? "Connection lost. Reconnecting; the answer will continue." : "Connection lost. Reconnecting…");
      } else if (state === Status.OFFLINE) {
        this.announce("Offline. Still trying to reconnect.");
      }
      if (state === Status.CONNECTED) this.wasConnected = true;
      this.lastStatus = state;
    }
    this.updateComposer();
  }

  onHello(hello) {
    const select = this.dom.model;
    const previous = select.value || this.savedModel;
    const models = Array.isArray(hello.models) ? hello.models.filter((m) => typeof m === "string") : [];
    select.replaceChildren(...models.map((m) => {
      const opt = document.createElement("option");
      opt.value = m;
      opt.textContent = m;
      return opt;
    }));
    if (previous && models.includes(previous)) select.value = previous;
    else if (models.includes(hello.default_model)) select.value = hello.default_model;
    select.disabled = models.length === 0;
    this.attachments.setLimit(hello.max_image_bytes);
    this.maxFrameBytes = Number.isInteger(hello.max_frame_bytes) && hello.max_frame_bytes > 0
      ? hello.max_frame_bytes
      : DEFAULT_MAX_FRAME_BYTES;
    this.updateComposer();
  }

  // -- Sending -------------------------------------------------------------------

  sendPrompt() {
    const d = this.dom;
    if (this.active || !this.client.ready) return;
    const text = d.prompt.value;
    const images = this.attachments.items.map(({ name, type, url }) => ({ name, type, url }));
    if (text.trim() === "" && images.length === 0) return;
    const user = new UserTurn({ text, images });
    const messages = this.fitMessages(this.history(null, user));
    if (messages === null) return;
    this.attachments.take();
    this.showComposerError("");
    this.append(user);
    const turn = new AssistantTurn(this.turnHooks);
    this.append(turn);
    d.prompt.value = "";
    this.autoGrow();
    this.stick = true;
    this.request(turn, messages);
    this.scrollToBottom();
  }

  /**
   * The conversation as chat messages: the system prompt, then every turn
   * before `upto` (null: all), then `extra`. Each user turn's message is
   * a function of whether its images are kept (see fitMessages).
   */
  history(upto, extra) {
    const items = [];
    for (const t of this.turns) {
      if (t === upto) break;
      if (t.role === "user") items.push(t);
      else if (t.content !== "") items.push({ message: () => ({ role: "assistant", content: t.content }) });
    }
    if (extra) items.push(extra);
    const system = this.dom.system.value.trim();
    const room = system ? MAX_MESSAGES - 1 : MAX_MESSAGES;
    const recent = items.slice(-room);
    return { system, items: recent };
  }

  /**
   * The messages, under the gateway's frame limit: older turns' images are
   * left out first; if the newest message alone is too large, an error is
   * shown and null returned (nothing is sent).
   */
  fitMessages({ system, items }) {
    const withImages = new Set(items.filter((i) => i instanceof UserTurn && i.images.some((img) => img.url)));
    const build = () => {
      const msgs = items.map((i) => (i instanceof UserTurn && !withImages.has(i) ? i.textMessage() : i.message()));
      return system ? [{ role: "system", content: system }, ...msgs] : msgs;
    };
    const size = (msgs) => bytesOf(JSON.stringify({
      type: "chat", id: "c".repeat(24), model: this.dom.model.value, messages: msgs, params: this.params(),
    }));
    let msgs = build();
    const older = items.slice(0, -1).filter((i) => withImages.has(i));
    while (size(msgs) > this.maxFrameBytes && older.length > 0) {
      withImages.delete(older.shift());
      msgs = build();
    }
    const total = size(msgs);
    if (total > this.maxFrameBytes) {
      this.showComposerError(`This message is too large to send (${formatBytes(total)}; the gateway takes at most ${formatBytes(this.maxFrameBytes)}). Remove an image or shorten it.`);
      return null;
    }
    return msgs;
  }

  params() {
    const raw = this.dom.temperature.value.trim();
    if (raw === "") return {};
    const t = Number(raw);
    if (!Number.isFinite(t)) return {};
    return { temperature: Math.min(2, Math.max(0, t)) };
  }

  /** Sends `messages` as a new chat answered into `turn`. */
  request(turn, messages) {
    const model = this.dom.model.value || undefined;
    for (const t of this.turns) if (t.role === "assistant" && t !== turn) t.setRetryable(false);
    let chat;
    try {
      chat = this.client.chat({ messages, model, params: this.params() });
    } catch (_) {
      turn.begin(`unsent-${Date.now()}`, null, model);
      turn.finish(TurnState.INTERRUPTED, { note: "not connected — the message was not sent" });
      turn.setRetryable(true);
      this.updateComposer();
      return;
    }
    turn.begin(chat.id, chat.session, model);
    const entry = { turn, chat };
    this.track(entry);
    this.active = entry;
    this.renderNow(turn);
    this.updateComposer();
    this.store.saveNow();
  }

  /** Routes a chat's events to its turn. */
  track(entry) {
    const { turn, chat } = entry;
    this.inFlight.set(chat.id, entry);
    const onFrame = (frame) => {
      if (turn.onFrame(frame)) this.queueRender(turn);
      this.store.schedule();
    };
    for (const type of ["start", "retry", "reasoning", "delta"]) chat.on(type, onFrame);
    chat.on("done", (frame) => this.onDone(entry, frame));
    chat.on("error", (frame) => this.onError(entry, frame));
    chat.on("interrupted", () => this.onInterrupted(entry));
    chat.on("paused", () => {
      turn.setPaused(true);
      this.store.saveNow();
    });
    chat.on("resuming", () => turn.setPaused(false));
  }

  /** The chat is over on the gateway's side: forget it, free the composer. */
  settle(entry) {
    this.inFlight.delete(entry.chat.id);
    if (this.active === entry) this.active = null;
    this.renderQueued.delete(entry.turn);
    this.updateComposer();
    this.afterGrow();
    this.store.saveNow();
  }

  onDone(entry, frame) {
    const { turn } = entry;
    if (Number.isInteger(frame.seq)) turn.seq = frame.seq;
    const usage = frame.usage && typeof frame.usage === "object" ? frame.usage : null;
    if (turn.state === TurnState.STOPPED || frame.finish_reason === "cancelled") {
      turn.finish(TurnState.STOPPED, { usage });
    } else {
      let note = null;
      if (frame.finish_reason && frame.finish_reason !== "stop") {
        note = frame.finish_reason === "length" ? "cut off at the length limit" : `finished: ${frame.finish_reason}`;
      }
      turn.finish(TurnState.DONE, { note, usage });
      this.announce("Answer complete.");
    }
    this.settle(entry);
  }

  onError(entry, frame) {
    const { turn } = entry;
    if (Number.isInteger(frame.seq)) turn.seq = frame.seq;
    if (turn.state === TurnState.STOPPED) {
      this.settle(entry);
      return;
    }
    if (frame.code === "resume_unavailable") {
      // The answer is lost with the connection: said calmly, with Retry.
      turn.finish(TurnState.INTERRUPTED, { note: "connection lost — this answer could not be resumed" });
      turn.setRetryable(this.isLast(turn));
      this.announce("The answer could not be resumed.");
    } else {
      turn.finish(TurnState.ERROR);
      turn.showError(frame, frame.retryable === true && this.isLast(turn));
      this.announce(`Error: ${ERROR_TITLES[frame.code] || frame.code || "unknown"}.`);
    }
    this.settle(entry);
  }

  onInterrupted(entry) {
    const { turn } = entry;
    if (turn.state !== TurnState.STOPPED) {
      turn.finish(TurnState.INTERRUPTED, { note: "connection lost — this answer was cut off" });
      turn.setRetryable(this.isLast(turn));
      this.announce("Connection lost. The answer was interrupted.");
    }
    this.settle(entry);
  }

  isLast(turn) {
    return this.turns[this.turns.length - 1] === turn;
  }

  stop() {
    const entry = this.active;
    if (!entry) return;
    this.active = null;
    entry.chat.cancel();
    entry.turn.finish(TurnState.STOPPED);
    this.updateComposer();
    this.announce("Stopped.");
    this.store.saveNow();
    this.dom.prompt.focus();
  }

  retry(turn) {
    if (this.active || !this.client.ready || !this.isLast(turn)) return;
    const hadFocus = turn.retryButton !== null && document.activeElement === turn.retryButton;
    const messages = this.fitMessages(this.history(turn, null));
    if (messages === null) return;
    this.stick = true;
    this.request(turn, messages);
    this.scrollToBottom();
    if (hadFocus) this.dom.prompt.focus();
  }

  newChat() {
    if (this.active) this.stop();
    for (const entry of this.inFlight.values()) {
      entry.chat.cancel();
      entry.turn.state = TurnState.STOPPED;
    }
    this.inFlight.clear();
    this.turns = [];
    this.dom.messages.replaceChildren();
    this.dom.answerLive.replaceChildren();
    this.dom.empty.hidden = false;
    this.dom.jump.hidden = true;
    this.dom.notice.hidden = true;
    this.attachments.clear();
    this.showComposerError("");
    this.store.clear();
    this.updateComposer();
    this.announce("New chat.");
    this.dom.prompt.focus();
  }

  append(turn) {
    this.turns.push(turn);
    this.dom.empty.hidden = true;
    this.dom.messages.appendChild(turn.node);
    this.afterGrow();
  }

  // -- Saved conversation ----------------------------------------------------------

  snapshot() {
    return {
      turns: this.turns.map((t) => t.toJSON()),
      model: this.dom.model.value || this.savedModel || null,
      system: this.dom.system.value,
      temperature: this.dom.temperature.value,
    };
  }

  /** Brings back the saved conversation; an answer that was in flight is resumed. */
  restore() {
    const data = this.store.load();
    if (!data) return;
    if (typeof data.system === "string") this.dom.system.value = data.system;
    if (typeof data.temperature === "string") this.dom.temperature.value = data.temperature;
    if (typeof data.model === "string") this.savedModel = data.model;
    for (const t of data.turns) {
      if (!t || typeof t !== "object") continue;
      if (t.role === "user") {
        const images = Array.isArray(t.images)
          ? t.images.filter((i) => i && typeof i.name === "string").map((i) => ({
            name: i.name, type: String(i.type || ""), url: typeof i.url === "string" && i.url.startsWith("data:image/") ? i.url : null,
          }))
          : [];
        this.append(new UserTurn({ text: typeof t.text === "string" ? t.text : "", images }));
      } else if (t.role === "assistant") {
        const turn = AssistantTurn.restore(t, this.turnHooks);
        this.append(turn);
        if (isLive(turn.state) && turn.id && this.active === null) {
          const chat = this.client.resume({ session: turn.session, id: turn.id, after: turn.seq });
          const entry = { turn, chat };
          this.track(entry);
          this.active = entry;
          turn.setPaused(true);
        } else if (isLive(turn.state)) {
          turn.finish(TurnState.INTERRUPTED, { note: "connection lost — this answer was cut off" });
        }
      }
    }
    for (const t of this.turns) {
      if (t.role === "assistant" && !this.isLast(t)) t.setRetryable(false);
    }
    this.stick = true;
    this.scrollToBottom();
  }

  // -- Rendering -------------------------------------------------------------------

  /** Batches rendering of streaming answers to one per animation frame. */
  queueRender(turn) {
    this.renderQueued.add(turn);
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    requestAnimationFrame(() => {
      this.renderScheduled = false;
      const t0 = PERF ? performance.now() : 0;
      const queued = [...this.renderQueued];
      this.renderQueued.clear();
      for (const t of queued) t.render();
      const t1 = PERF ? performance.now() : 0;
      this.afterGrow(); // reads the layout: the browser lays the page out here
      if (PERF) {
        window.__netflyPerf.renderMs.push(performance.now() - t0);
        window.__netflyPerf.layoutMs.push(performance.now() - t1);
      }
    });
  }

  renderNow(turn) {
    this.renderQueued.delete(turn);
    turn.render();
    this.afterGrow();
  }

  distanceFromBottom() {
    const s = this.dom.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight;
  }

  scrollToBottom() {
    const s = this.dom.scroller;
    s.scrollTop = s.scrollHeight;
  }

  /** Keeps the newest text in view unless the user scrolled up. */
  afterGrow() {
    if (this.stick) this.scrollToBottom();
    else this.dom.jump.hidden = this.distanceFromBottom() < STICK_PX;
  }

  // -- Notices and announcements ------------------------------------------------------

  showNotice(text) {
    const n = this.dom.notice;
    n.replaceChildren(el("span", "notice-text", text), button("ghost small notice-close", "Dismiss"));
    n.hidden = false;
    this.announce(text);
  }

  showComposerError(text) {
    const e = this.dom.composerError;
    if (e.textContent !== text) e.textContent = text;
    e.hidden = text === "";
  }

  /** A status change, said once through the polite status region. */
  announce(text) {
    // Cleared first, so that the same words are announced again later.
    this.dom.announcer.textContent = "";
    setTimeout(() => { this.dom.announcer.textContent = text; }, 50);
  }

  /** A finished piece of the answer (a sentence, a paragraph, a block) for screen readers. */
  say(text) {
    const live = this.dom.answerLive;
    live.append(el("p", null, text));
    while (live.childElementCount > LIVE_PIECES) live.firstElementChild.remove();
  }
}

const app = new ChatApp(document);
app.start().catch((err) => console.error("netfly: the page failed to start", err));
