// netfly demo chat page: the reference browser client of PROTOCOL.md §3.
//
// Three parts, top to bottom:
//   1. ChatSocket   - the protocol client: connect, reconnect with backoff,
//                     hello, send chat/cancel, hand every other frame on.
//   2. Text view    - renders model output as text (never as HTML), with
//                     ``` fenced blocks shown monospaced.
//   3. ChatApp      - the conversation: turns, composer, Stop/Retry, status.
// No framework, no build step, no network besides the page's own host.
"use strict";

(() => {
  // ---------------------------------------------------------------------
  // 1. Protocol client
  // ---------------------------------------------------------------------

  /** Reconnect delays: full jitter in [d/2, d], d = BASE·2^(n−1) capped. */
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 8000;
  /** After this many failed attempts in a row the status reads "offline". */
  const OFFLINE_AFTER_FAILURES = 4;

  /** The WebSocket URL for this page: same host, /ws, ?token= passed on. */
  function gatewayUrl(loc) {
    const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
    let url = `${scheme}//${loc.host}/ws`;
    const token = new URLSearchParams(loc.search).get("token");
    if (token) url += `?token=${encodeURIComponent(token)}`;
    return url;
  }

  /**
   * One logical connection to the gateway, re-established by itself.
   *
   * Handlers (all optional):
   *   onStatus(state, detail)  state: connecting | connected | reconnecting | offline
   *   onHello(hello)           the hello frame, on every (re)connection
   *   onFrame(frame)           start / delta / retry / done / error frames
   *   onDisconnect()           the socket went away; chats in flight are lost
   */
  class ChatSocket {
    constructor(url, handlers) {
      this.url = url;
      this.handlers = handlers;
      this.ws = null;
      this.hello = null;
      this.failures = 0;
      this.everConnected = false;
      this.retryTimer = null;
      this.tickTimer = null;
      this.retryAt = 0;
    }

    /** True once hello has arrived on an open socket. */
    get ready() {
      return this.hello !== null && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
    }

    start() {
      window.addEventListener("online", () => this.reconnectNow());
      window.addEventListener("offline", () => {
        if (!this.ready) this.emitStatus();
      });
      this.connect();
    }

    connect() {
      this.clearTimers();
      this.setStatus(this.waitingState(), { trying: true });
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        this.onClosed(null);
        return;
      }
      this.ws = ws;
      ws.addEventListener("message", (ev) => this.onMessage(ws, ev));
      ws.addEventListener("close", () => this.onClosed(ws));
      // An "error" event is always followed by "close"; nothing to do here.
    }

    /** Skip the remaining backoff and try at once (button, `online`). */
    reconnectNow() {
      if (this.ws !== null) return; // a socket is open or opening
      this.connect();
    }

    onMessage(ws, ev) {
      if (ws !== this.ws) return;
      if (typeof ev.data !== "string") return; // the gateway only sends text
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch (_) {
        console.warn("netfly: ignoring a frame that is not JSON");
        return;
      }
      if (frame === null || typeof frame !== "object") return;
      if (frame.type === "hello") {
        this.hello = frame;
        this.failures = 0;
        this.everConnected = true;
        this.setStatus("connected");
        this.call("onHello", frame);
        return;
      }
      this.call("onFrame", frame);
    }

    onClosed(ws) {
      if (ws !== null && ws !== this.ws) return; // a socket we already left
      const wasReady = this.hello !== null;
      this.ws = null;
      this.hello = null;
      if (wasReady) this.call("onDisconnect");
      else this.failures += 1;
      this.scheduleReconnect();
    }

    scheduleReconnect() {
      this.clearTimers();
      const n = Math.max(1, this.failures + 1);
      const ceiling = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** (n - 1));
      const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
      this.retryAt = Date.now() + delay;
      this.retryTimer = setTimeout(() => this.connect(), delay);
      this.tickTimer = setInterval(() => this.emitStatus(), 1000);
      this.emitStatus();
    }

    /** connecting (never connected yet), reconnecting, or offline. */
    waitingState() {
      if (navigator.onLine === false || this.failures >= OFFLINE_AFTER_FAILURES) return "offline";
      return this.everConnected ? "reconnecting" : "connecting";
    }

    /** The status while waiting for the next attempt, with its countdown. */
    emitStatus() {
      if (this.ready || this.retryTimer === null) return;
      const seconds = Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000));
      this.setStatus(this.waitingState(), { retryInSeconds: seconds });
    }

    clearTimers() {
      if (this.retryTimer !== null) clearTimeout(this.retryTimer);
      if (this.tickTimer !== null) clearInterval(this.tickTimer);
      this.retryTimer = null;
      this.tickTimer = null;
    }

    setStatus(state, detail) {
      this.call("onStatus", state, detail || {});
    }

    call(name, ...args) {
      const fn = this.handlers[name];
      if (typeof fn === "function") fn(...args);
    }

    send(frame) {
      if (!this.ready) return false;
      this.ws.send(JSON.stringify(frame));
      return true;
    }

    /** Starts a chat; `params` is omitted from the frame when empty. */
    chat(id, model, messages, params) {
      const frame = { type: "chat", id, messages };
      if (model) frame.model = model;
      if (params && Object.keys(params).length > 0) frame.params = params;
      return this.send(frame);
    }

    cancel(id) {
      return this.send({ type: "cancel", id });
    }
  }

  // ---------------------------------------------------------------------
  // 2. Text view: model output as text, fenced code monospaced
  // ---------------------------------------------------------------------

  const FENCE = /^[ \t]*```/;

  /**
   * Splits text into prose and ``` fenced code segments. Fence lines stay
   * in the output (shown small in the code block), so the rendered text is
   * exactly the model's text. An unclosed fence runs to the end, as it does
   * while an answer is still streaming.
   */
  function segments(text) {
    const out = [];
    const lines = text.match(/[^\n]*\n|[^\n]+$/g) || [];
    let current = null;
    let open = false;
    for (const line of lines) {
      if (FENCE.test(line)) {
        if (!open) {
          current = { code: true, open: line, body: "", close: "" };
          out.push(current);
          open = true;
        } else {
          current.close = line;
          current = null;
          open = false;
        }
        continue;
      }
      if (open) {
        current.body += line;
      } else {
        if (current === null || current.code) {
          current = { code: false, text: "" };
          out.push(current);
        }
        current.text += line;
      }
    }
    return out;
  }

  function sameSegment(a, b) {
    return a.code === b.code && (a.code
      ? a.open === b.open && a.body === b.body && a.close === b.close
      : a.text === b.text);
  }

  /** The DOM of one segment: a prose block, or a <pre> with its fences. */
  function segmentNode(seg) {
    if (!seg.code) {
      const div = document.createElement("div");
      div.className = "prose";
      div.textContent = seg.text;
      return { el: div, text: div };
    }
    const pre = document.createElement("pre");
    pre.className = "code";
    const open = document.createElement("span");
    open.className = "fence";
    open.textContent = seg.open;
    const code = document.createElement("code");
    code.textContent = seg.body;
    pre.append(open, code);
    if (seg.close) pre.appendChild(fenceSpan(seg.close));
    return { el: pre, text: code };
  }

  function fenceSpan(line) {
    const span = document.createElement("span");
    span.className = "fence";
    span.textContent = line;
    return span;
  }

  /**
   * Shows a growing text in `container`, safely (text nodes only). Each
   * update keeps the nodes of what is already shown and appends only the new
   * text where it can, so that a screen reader's live region announces the
   * new words rather than the whole answer again.
   */
  class TextView {
    constructor(container) {
      this.container = container;
      this.segs = [];
      this.nodes = [];
    }

    update(text) {
      const next = segments(text);
      let keep = 0;
      while (keep < this.segs.length && keep < next.length && sameSegment(this.segs[keep], next[keep])) keep++;
      if (keep === this.segs.length - 1 && keep < next.length && this.extend(keep, next[keep])) keep++;
      for (let i = keep; i < this.nodes.length; i++) this.nodes[i].el.remove();
      this.nodes.length = keep;
      for (let i = keep; i < next.length; i++) {
        const node = segmentNode(next[i]);
        this.container.appendChild(node.el);
        this.nodes.push(node);
      }
      this.segs = next;
    }

    /** Grows the last shown segment into `seg` in place, if it only grew. */
    extend(i, seg) {
      const old = this.segs[i];
      const node = this.nodes[i];
      if (!old.code && !seg.code && seg.text.startsWith(old.text)) {
        node.text.appendChild(document.createTextNode(seg.text.slice(old.text.length)));
        return true;
      }
      if (old.code && seg.code && old.open === seg.open && old.close === "" && seg.body.startsWith(old.body)) {
        if (seg.body.length > old.body.length) {
          node.text.appendChild(document.createTextNode(seg.body.slice(old.body.length)));
        }
        if (seg.close) node.el.appendChild(fenceSpan(seg.close));
        return true;
      }
      return false;
    }

    /** Merges the text nodes left by streaming (same text, fewer nodes). */
    settle() {
      this.container.normalize();
    }
  }

  /** Copies text to the clipboard, with a fallback for insecure origins. */
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (_) {
        // fall through to the textarea fallback
      }
    }
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (_) {
      ok = false;
    }
    ta.remove();
    return ok;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------------
  // 3. The chat page
  // ---------------------------------------------------------------------

  const ERROR_TITLES = {
    bad_request: "The gateway rejected the request",
    unknown_model: "Unknown model",
    busy: "Too many answers at once",
    upstream_rejected: "The model provider rejected the request",
    upstream_unavailable: "The model provider is unavailable",
    upstream_broken: "The answer broke off",
    upstream_timeout: "The model provider timed out",
  };

  const STATUS_TEXT = {
    connecting: "connecting…",
    connected: "connected",
    reconnecting: "reconnecting…",
    offline: "offline",
  };

  /** Messages per chat frame, at most (PROTOCOL.md §3). */
  const MAX_MESSAGES = 256;
  /** Distance from the bottom (px) within which auto-scroll stays on. */
  const STICK_PX = 48;

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
        conversation: $("conversation"),
        scroller: $("main"),
        empty: $("empty"),
        messages: $("messages"),
        jump: $("jump"),
        composer: $("composer"),
        prompt: $("prompt"),
        send: $("send"),
        announcer: $("announcer"),
      };
      /** Every turn in order: {role, content, node, ...}. */
      this.turns = [];
      /** Assistant turns whose chat is in flight on the socket, by id. */
      this.inFlight = new Map();
      /** The assistant turn the composer is waiting on (Stop acts on it). */
      this.active = null;
      this.nextId = 1;
      this.maxAttempts = null;
      this.stick = true;
      this.renderQueued = new Set();
      this.renderScheduled = false;

      this.socket = new ChatSocket(gatewayUrl(window.location), {
        onStatus: (state, detail) => this.showStatus(state, detail),
        onHello: (hello) => this.onHello(hello),
        onFrame: (frame) => this.onFrame(frame),
        onDisconnect: () => this.onDisconnect(),
      });
      this.bindUi();
    }

    start() {
      this.socket.start();
      this.updateComposer();
    }

    // -- UI events ---------------------------------------------------------

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
        } else if (ev.key === "Escape" && this.active) {
          ev.preventDefault();
          this.stop();
        }
      });
      d.prompt.addEventListener("input", () => {
        this.autoGrow();
        this.updateComposer();
      });
      document.addEventListener("keydown", (ev) => {
        if (ev.key === "Escape" && this.active && ev.target !== d.prompt) this.stop();
      });
      d.reconnectNow.addEventListener("click", () => this.socket.reconnectNow());
      d.newChat.addEventListener("click", () => this.newChat());
      d.scroller.addEventListener("scroll", () => {
        this.stick = this.distanceFromBottom() < STICK_PX;
        if (this.stick) d.jump.hidden = true;
      });
      d.jump.addEventListener("click", () => {
        this.stick = true;
        this.scrollToBottom();
        d.prompt.focus();
      });
      d.notice.addEventListener("click", (ev) => {
        if (ev.target.closest(".notice-close")) d.notice.hidden = true;
      });
    }

    autoGrow() {
      const p = this.dom.prompt;
      p.style.height = "auto";
      p.style.height = `${Math.min(p.scrollHeight + 2, Math.round(window.innerHeight * 0.4))}px`;
    }

    updateComposer() {
      const d = this.dom;
      if (this.active) {
        d.send.textContent = "Stop";
        d.send.dataset.mode = "stop";
        d.send.disabled = false;
        d.send.setAttribute("aria-label", "Stop the answer");
        d.send.classList.add("stop");
      } else {
        d.send.textContent = "Send";
        d.send.dataset.mode = "send";
        d.send.disabled = !this.socket.ready || d.prompt.value.trim() === "";
        d.send.setAttribute("aria-label", this.socket.ready ? "Send message" : "Send message (waiting for connection)");
        d.send.classList.remove("stop");
      }
      for (const t of this.turns) {
        if (t.retryButton) t.retryButton.disabled = !this.socket.ready || this.active !== null;
      }
    }

    // -- Connection --------------------------------------------------------

    showStatus(state, detail) {
      const d = this.dom;
      d.status.dataset.state = state;
      const text = STATUS_TEXT[state] || state;
      if (d.statusText.textContent !== text) d.statusText.textContent = text;
      // The countdown is not in the live region: it would be read every second.
      let more = "";
      if (state === "offline") more = detail.trying ? "trying…" : `retrying in ${detail.retryInSeconds || 0} s`;
      if (d.statusDetail.textContent !== more) d.statusDetail.textContent = more;
      d.statusDetail.hidden = more === "";
      d.reconnectNow.hidden = state !== "offline";
      this.updateComposer();
    }

    onHello(hello) {
      const select = this.dom.model;
      const previous = select.value;
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
      this.maxAttempts = Number.isInteger(hello.max_attempts) ? hello.max_attempts : null;
      this.updateComposer();
    }

    onDisconnect() {
      for (const turn of this.inFlight.values()) {
        if (turn.state === "stopped") continue;
        this.finishTurn(turn, "interrupted");
        turn.meta.note = "connection lost — this answer was cut off";
        this.showError(turn, null, true);
        this.refreshTurn(turn);
      }
      this.inFlight.clear();
      if (this.active) {
        this.active = null;
        this.announce("Connection lost. The answer was interrupted.");
      }
      this.updateComposer();
    }

    // -- Frames ------------------------------------------------------------

    onFrame(frame) {
      if (frame.type === "error" && (frame.id === null || frame.id === undefined)) {
        this.showNotice(`${ERROR_TITLES[frame.code] || "Error"}: ${frame.message || frame.code || "unknown error"}`);
        return;
      }
      const turn = this.inFlight.get(frame.id);
      if (!turn) return; // unknown, or already finished: nothing to show
      switch (frame.type) {
        case "start":
          turn.meta.model = typeof frame.model === "string" ? frame.model : turn.meta.model;
          turn.meta.upstream = typeof frame.upstream === "string" ? frame.upstream : null;
          turn.meta.retry = null;
          if (turn.state === "waiting") turn.state = "streaming";
          this.refreshTurn(turn);
          break;
        case "delta":
          if (turn.state === "stopped") return; // the user said stop: show no more
          if (typeof frame.content !== "string") return;
          turn.content += frame.content;
          turn.state = "streaming";
          if (turn.meta.retry) {
            turn.meta.retry = null;
            this.refreshTurn(turn);
          }
          this.queueRender(turn);
          break;
        case "retry":
          if (turn.state === "stopped") return;
          turn.meta.retry = {
            attempt: frame.attempt,
            delayMs: frame.delay_ms,
            reason: typeof frame.reason === "string" ? frame.reason : "",
          };
          this.refreshTurn(turn);
          break;
        case "done":
          this.inFlight.delete(frame.id);
          if (frame.usage && typeof frame.usage === "object") turn.meta.usage = frame.usage;
          if (turn.state === "stopped" || frame.finish_reason === "cancelled") {
            this.finishTurn(turn, "stopped");
          } else {
            if (frame.finish_reason && frame.finish_reason !== "stop") {
              turn.meta.note = frame.finish_reason === "length"
                ? "cut off at the length limit"
                : `finished: ${frame.finish_reason}`;
            }
            this.finishTurn(turn, "done");
            this.announce("Answer complete.");
          }
          this.renderNow(turn);
          this.refreshTurn(turn);
          break;
        case "error":
          this.inFlight.delete(frame.id);
          if (turn.state === "stopped") {
            this.refreshTurn(turn);
            break;
          }
          this.finishTurn(turn, "error");
          this.renderNow(turn);
          this.showError(turn, frame, frame.retryable === true);
          this.refreshTurn(turn);
          this.announce(`Error: ${frame.message || frame.code}`);
          break;
        default:
          break; // frames newer than this page: ignored
      }
    }

    // -- Turns -------------------------------------------------------------

    sendPrompt() {
      const text = this.dom.prompt.value;
      if (text.trim() === "" || this.active || !this.socket.ready) return;
      this.addUserTurn(text);
      const turn = this.addAssistantTurn();
      if (!this.request(turn)) return;
      this.dom.prompt.value = "";
      this.autoGrow();
      this.stick = true;
      this.scrollToBottom();
      this.updateComposer();
    }

    /** Sends the history up to `turn` as a new chat answered into `turn`. */
    request(turn) {
      const id = `t${this.nextId++}`;
      const messages = this.history(turn);
      const params = this.params();
      const model = this.dom.model.value || undefined;
      for (const t of this.turns) this.dropRetry(t);
      turn.id = id;
      turn.content = "";
      turn.state = "waiting";
      turn.meta = { model: model || null, upstream: null, retry: null, usage: null, note: null };
      turn.error = null;
      turn.errorNode.hidden = true;
      turn.errorNode.replaceChildren();
      turn.node.dataset.turnId = id;
      if (!this.socket.chat(id, model, messages, params)) {
        this.finishTurn(turn, "interrupted");
        turn.meta.note = "not connected — the message was not sent";
        this.showError(turn, null, true);
        this.refreshTurn(turn);
        return false;
      }
      this.inFlight.set(id, turn);
      this.active = turn;
      this.renderNow(turn);
      this.refreshTurn(turn);
      this.updateComposer();
      return true;
    }

    /** The conversation as chat messages: system prompt, then every turn before `upto`. */
    history(upto) {
      const msgs = [];
      for (const t of this.turns) {
        if (t === upto) break;
        if (t.role === "user") msgs.push({ role: "user", content: t.content });
        else if (t.content !== "") msgs.push({ role: "assistant", content: t.content });
      }
      const system = this.dom.system.value.trim();
      const room = system ? MAX_MESSAGES - 1 : MAX_MESSAGES;
      const recent = msgs.slice(-room);
      return system ? [{ role: "system", content: system }, ...recent] : recent;
    }

    params() {
      const raw = this.dom.temperature.value.trim();
      if (raw === "") return {};
      const t = Number(raw);
      if (!Number.isFinite(t)) return {};
      return { temperature: Math.min(2, Math.max(0, t)) };
    }

    stop() {
      const turn = this.active;
      if (!turn) return;
      this.active = null;
      this.socket.cancel(turn.id);
      this.finishTurn(turn, "stopped");
      this.renderNow(turn);
      this.refreshTurn(turn);
      this.updateComposer();
      this.announce("Stopped.");
      this.dom.prompt.focus();
    }

    retry(turn) {
      if (this.active || !this.socket.ready) return;
      if (this.turns[this.turns.length - 1] !== turn) return;
      this.request(turn);
      this.stick = true;
      this.scrollToBottom();
    }

    newChat() {
      if (this.active) this.stop();
      for (const id of this.inFlight.keys()) this.socket.cancel(id);
      for (const t of this.inFlight.values()) t.state = "stopped";
      this.turns = [];
      this.dom.messages.replaceChildren();
      this.dom.empty.hidden = false;
      this.dom.jump.hidden = true;
      this.dom.notice.hidden = true;
      this.updateComposer();
      this.dom.prompt.focus();
    }

    finishTurn(turn, state) {
      turn.state = state;
      if (this.active === turn) this.active = null;
      this.updateComposer();
    }

    addUserTurn(text) {
      const li = el("li", "turn user");
      li.dataset.role = "user";
      li.append(el("h2", "visually-hidden", "You said:"));
      const body = el("div", "turn-body");
      new TextView(body).update(text);
      li.append(body);
      this.append({ role: "user", content: text, node: li });
    }

    addAssistantTurn() {
      const li = el("li", "turn assistant");
      li.dataset.role = "assistant";
      li.append(el("h2", "visually-hidden", "Assistant:"));
      const body = el("div", "turn-body");
      const meta = el("div", "turn-meta");
      const note = el("p", "turn-note");
      note.hidden = true;
      const errorBox = el("div", "turn-error");
      errorBox.setAttribute("role", "alert");
      errorBox.hidden = true;
      const footer = el("div", "turn-footer");
      const actions = el("div", "turn-actions");
      const copy = el("button", "ghost small copy", "Copy");
      copy.type = "button";
      copy.setAttribute("aria-label", "Copy this answer");
      actions.append(copy);
      footer.append(actions, meta);
      li.append(body, note, errorBox, footer);
      const turn = {
        role: "assistant", content: "", state: "waiting", id: null, node: li, body, view: new TextView(body), meta: {},
        metaNode: meta, noteNode: note, errorNode: errorBox, actions, copyButton: copy, retryButton: null,
      };
      copy.addEventListener("click", async () => {
        const ok = await copyText(turn.content);
        copy.textContent = ok ? "Copied" : "Copy failed";
        setTimeout(() => { copy.textContent = "Copy"; }, 1500);
      });
      this.append(turn);
      return turn;
    }

    append(turn) {
      this.turns.push(turn);
      this.dom.empty.hidden = true;
      this.dom.messages.appendChild(turn.node);
      this.afterGrow();
    }

    showError(turn, frame, retryable) {
      const box = turn.errorNode;
      box.replaceChildren();
      if (frame) {
        box.append(el("strong", "error-title", ERROR_TITLES[frame.code] || "Error"));
        box.append(el("span", "error-message", frame.message || ""));
        if (frame.code) box.append(el("code", "error-code", frame.code));
        box.hidden = false;
        turn.error = frame;
      }
      if (retryable) {
        const btn = el("button", "small retry", "Retry");
        btn.type = "button";
        btn.setAttribute("aria-label", "Retry this answer");
        btn.disabled = !this.socket.ready || this.active !== null;
        btn.addEventListener("click", () => this.retry(turn));
        turn.actions.prepend(btn);
        turn.retryButton = btn;
      }
    }

    /** Only the last turn can be retried: older Retry buttons go away. */
    dropRetry(turn) {
      if (turn.retryButton) {
        turn.retryButton.remove();
        turn.retryButton = null;
      }
    }

    /** Updates a turn's state attributes, small print and notes. */
    refreshTurn(turn) {
      const li = turn.node;
      li.dataset.state = turn.state;
      const streaming = turn.state === "waiting" || turn.state === "streaming";
      if (streaming) {
        turn.body.setAttribute("aria-live", "polite");
        turn.body.setAttribute("aria-atomic", "false");
      } else {
        turn.body.removeAttribute("aria-live");
        turn.body.removeAttribute("aria-atomic");
      }
      turn.body.classList.toggle("pending", turn.state === "waiting" && turn.content === "");
      turn.body.hidden = turn.content === "" && !streaming;

      const m = turn.meta;
      const parts = [];
      if (m.model) parts.push(m.model);
      if (m.upstream) parts.push(`via ${m.upstream}`);
      if (m.usage && Number.isFinite(m.usage.total_tokens)) parts.push(`${m.usage.total_tokens} tokens`);
      turn.metaNode.textContent = parts.join(" · ");

      let note = m.note;
      if (turn.state === "stopped") note = "stopped";
      else if (turn.state === "interrupted") note = m.note || "interrupted";
      else if (streaming && m.retry) {
        const of = this.maxAttempts ? `/${this.maxAttempts}` : "";
        note = `upstream busy, retrying ${m.retry.attempt}${of}…`;
      }
      turn.noteNode.textContent = note || "";
      turn.noteNode.hidden = !note;
      turn.noteNode.title = streaming && m.retry ? m.retry.reason : "";
      turn.noteNode.className = `turn-note ${turn.state === "interrupted" ? "warn" : ""}`;
      turn.copyButton.hidden = turn.content === "";
      this.afterGrow();
    }

    // -- Rendering -----------------------------------------------------------

    /** Batches re-rendering of a streaming answer to one per frame. */
    queueRender(turn) {
      this.renderQueued.add(turn);
      if (this.renderScheduled) return;
      this.renderScheduled = true;
      requestAnimationFrame(() => {
        this.renderScheduled = false;
        const queued = [...this.renderQueued];
        this.renderQueued.clear();
        for (const t of queued) this.renderNow(t);
      });
    }

    renderNow(turn) {
      this.renderQueued.delete(turn);
      turn.view.update(turn.content);
      if (turn.state !== "waiting" && turn.state !== "streaming") turn.view.settle();
      turn.body.classList.toggle("pending", turn.state === "waiting" && turn.content === "");
      turn.body.hidden = turn.content === "" && turn.state !== "waiting" && turn.state !== "streaming";
      turn.copyButton.hidden = turn.content === "";
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

    showNotice(text) {
      const n = this.dom.notice;
      n.replaceChildren(el("span", "notice-text", text));
      const close = el("button", "ghost small notice-close", "Dismiss");
      close.type = "button";
      n.append(close);
      n.hidden = false;
    }

    announce(text) {
      // Cleared first so that the same words are announced again.
      this.dom.announcer.textContent = "";
      setTimeout(() => { this.dom.announcer.textContent = text; }, 50);
    }
  }

  function main() {
    const app = new ChatApp(document);
    app.start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
