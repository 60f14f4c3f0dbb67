/**
 * netfly-client.js: a small browser client for the netfly gateway's
 * WebSocket protocol (PROTOCOL.md §3). No dependencies, no build step; the
 * gateway serves it at `/static/netfly-client.js`.
 *
 * It connects to the page's own host (`/ws`, with the page's `?token=`
 * passed on), reconnects by itself with jittered backoff, starts and
 * cancels chats, and, when the gateway names a session in `hello`, resumes
 * the chats that were in flight when a connection dropped (§3.3): each
 * chat's listeners keep receiving its frames, with nothing repeated and
 * nothing skipped.
 *
 * @example
 * import { NetflyClient } from "/static/netfly-client.js";
 *
 * const client = new NetflyClient();
 * client.on("status", ({ state }) => { statusEl.textContent = state; });
 * client.on("hello", (hello) => console.log("models:", hello.models));
 * client.connect();
 *
 * // once `client.ready` (after the first "hello"):
 * const chat = client.chat({ messages: [{ role: "user", content: "Hi" }] });
 * chat.on("delta", (f) => { answerEl.textContent += f.content; });
 * chat.on("done", (f) => console.log("finished:", f.finish_reason));
 * chat.on("error", (f) => console.log("failed:", f.code, f.message));
 * chat.on("interrupted", () => console.log("connection lost; not resumable"));
 * // stopButton.onclick = () => chat.cancel();
 *
 * Per-chat events: `start`, `reasoning`, `delta`, `retry`, `done`, `error`
 * (each with the gateway's frame), `paused` (the connection dropped; the
 * chat will be resumed when it is back), `resuming` (the resume was sent),
 * `interrupted` (the connection dropped and the chat cannot be resumed:
 * the gateway names no session). `done`, `error` and `interrupted` end a
 * chat; nothing follows them.
 *
 * Client events: `status` ({state, retryInSeconds?, trying?}, state one of
 * {@link Status}), `hello` (the hello frame, on every connection),
 * `error` (an error frame the gateway could not tie to a chat).
 *
 * To survive a page reload, keep {@link ChatStream#session},
 * {@link ChatStream#id} and {@link ChatStream#lastSeq} (together with the
 * text you rendered up to that seq), and after the reload call
 * `client.resume({ session, id, after: lastSeq })`.
 */

/** Connection states, as `status` events report them. */
export const Status = Object.freeze({
  /** Never connected yet; trying. */
  CONNECTING: "connecting",
  /** Open, and `hello` received. */
  CONNECTED: "connected",
  /** Was connected; waiting for the next attempt or trying. */
  RECONNECTING: "reconnecting",
  /** Many attempts failed in a row, or the browser says it is offline. */
  OFFLINE: "offline",
});

/** Where a chat is, as {@link ChatStream#phase} says. */
export const ChatPhase = Object.freeze({
  /** Sent (or resumed) on the open connection; frames arrive. */
  RUNNING: "running",
  /** The connection dropped; resumed once a new one says hello. */
  PAUSED: "paused",
  /** Its terminal event was delivered; nothing more comes. */
  ENDED: "ended",
});

/** Frame types that end a chat. */
const TERMINAL = new Set(["done", "error"]);
/** Frame types handed to a chat's listeners. */
const CHAT_EVENTS = new Set(["start", "reasoning", "delta", "retry", "done", "error"]);

/** Default reconnect delays: full jitter in [d/2, d], d = base·2^(n−1), capped. */
const RECONNECT_BASE_MS = 500;
const RECONNECT_MAX_MS = 8000;
/** After this many failed attempts in a row the status reads "offline". */
const OFFLINE_AFTER_FAILURES = 4;

/**
 * The gateway's WebSocket URL for a page at `loc`: same host, `/ws`, and
 * the page's `?token=` (browsers cannot set headers on a WebSocket).
 * @param {Location|URL} loc
 * @returns {string}
 */
export function gatewayUrl(loc) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  let url = `${scheme}//${loc.host}/ws`;
  const token = new URLSearchParams(loc.search).get("token");
  if (token) url += `?token=${encodeURIComponent(token)}`;
  return url;
}

/** A tiny event emitter: `on(type, fn)` returns a function that unsubscribes. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  /**
   * @param {string} type
   * @param {Function} fn
   * @returns {() => void} unsubscribe
   */
  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type)?.delete(fn);
  }

  /** Calls every listener of `type`; one that throws does not stop the others. */
  emit(type, arg) {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        console.error(`netfly-client: a "${type}" listener threw`, err);
      }
    }
  }
}

/**
 * One chat: started with {@link NetflyClient#chat} or picked up again with
 * {@link NetflyClient#resume}. Listen with `on(event, fn)`.
 */
export class ChatStream extends Emitter {
  /**
   * @param {NetflyClient} client
   * @param {string} id
   * @param {string|null} session the session it belongs to (null: not resumable)
   * @param {number} lastSeq the last seq already handed to the page
   */
  constructor(client, id, session, lastSeq) {
    super();
    this.client = client;
    /** The chat's id on the wire. */
    this.id = id;
    /** The gateway session that owns it (from `hello.session`), or null. */
    this.session = session;
    /** The highest `seq` handed to this chat's listeners (0: none yet). */
    this.lastSeq = lastSeq;
    /** @type {string} one of {@link ChatPhase} */
    this.phase = ChatPhase.RUNNING;
    /** True once cancel() was called. */
    this.cancelRequested = false;
  }

  /** Asks the gateway to stop this chat (now, or as soon as it is resumed). */
  cancel() {
    this.client.cancelChat(this);
  }

  /** True once `done`, `error` or `interrupted` was delivered. */
  get ended() {
    return this.phase === ChatPhase.ENDED;
  }
}

/** A random id prefix, so that chats of a reloaded page never collide with its earlier ones. */
function randomTag() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}

/**
 * One logical connection to a netfly gateway, re-established by itself.
 */
export class NetflyClient extends Emitter {
  /**
   * @param {object} [options]
   * @param {string} [options.url] WebSocket URL (default: this page's host, see {@link gatewayUrl})
   * @param {number} [options.reconnectBaseMs=500]
   * @param {number} [options.reconnectMaxMs=8000]
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (tests)
   */
  constructor(options = {}) {
    super();
    this.url = options.url || gatewayUrl(globalThis.location);
    this.baseMs = options.reconnectBaseMs ?? RECONNECT_BASE_MS;
    this.maxMs = options.reconnectMaxMs ?? RECONNECT_MAX_MS;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    /** The current socket, open or opening; null between attempts. */
    this.ws = null;
    /** The last hello of the open connection; null while not connected. */
    this.hello = null;
    /** The session named by the last hello (kept across reconnects until a new hello). */
    this.session = null;
    /** Chats not yet ended, by id. @type {Map<string, ChatStream>} */
    this.chats = new Map();
    this.failures = 0;
    this.everConnected = false;
    this.started = false;
    this.closed = false;
    this.retryTimer = null;
    this.tickTimer = null;
    this.retryAt = 0;
    this.tag = randomTag();
    this.counter = 0;
    this.onOnline = () => this.reconnectNow();
    this.onOffline = () => {
      if (!this.ready) this.emitWaiting();
    };
  }

  /** True while a connection is open and its hello has arrived. */
  get ready() {
    return this.hello !== null && this.ws !== null && this.ws.readyState === 1;
  }

  /** Starts connecting (and reconnecting, until {@link close}). */
  connect() {
    if (this.started) return;
    this.started = true;
    this.closed = false;
    globalThis.addEventListener?.("online", this.onOnline);
    globalThis.addEventListener?.("offline", this.onOffline);
    this.open();
  }

  /** Closes the connection for good (no reconnect); chats in flight are left as they are. */
  close() {
    this.closed = true;
    this.started = false;
    this.clearTimers();
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("offline", this.onOffline);
    const ws = this.ws;
    this.ws = null;
    this.hello = null;
    if (ws) ws.close(1000);
  }

  /** Skips the remaining backoff and tries at once (a "retry now" button, `online`). */
  reconnectNow() {
    if (this.closed || !this.started || this.ws !== null) return;
    this.open();
  }

  /** A fresh chat id: unique within this page's life and across its reloads. */
  newId() {
    this.counter += 1;
    return `c${this.tag}${this.counter}`;
  }

  /**
   * Starts a chat. Throws when not {@link ready}.
   * @param {object} req
   * @param {Array<object>} req.messages
   * @param {string} [req.model]
   * @param {object} [req.params] omitted from the frame when empty
   * @param {string} [req.id] default: {@link newId}
   * @returns {ChatStream}
   */
  chat({ messages, model, params, id }) {
    if (!this.ready) throw new Error("netfly-client: not connected");
    const chat = new ChatStream(this, id || this.newId(), this.session, 0);
    const frame = { type: "chat", id: chat.id, messages };
    if (model) frame.model = model;
    if (params && Object.keys(params).length > 0) frame.params = params;
    this.chats.set(chat.id, chat);
    this.send(frame);
    return chat;
  }

  /**
   * Picks up a chat of an earlier connection (or an earlier page): frames
   * after `after` are delivered to the returned chat's listeners. Sent at
   * once when connected, else on the next hello. A chat without a session
   * cannot be resumed: it ends with `interrupted`.
   * @param {{session: string|null, id: string, after: number}} what
   * @returns {ChatStream}
   */
  resume({ session, id, after }) {
    const chat = new ChatStream(this, id, session || null, Number.isInteger(after) && after >= 0 ? after : 0);
    chat.phase = ChatPhase.PAUSED;
    this.chats.set(id, chat);
    if (!chat.session) {
      queueMicrotask(() => this.interrupt(chat));
    } else if (this.ready) {
      this.sendResume(chat);
    }
    return chat;
  }

  /** Called by {@link ChatStream#cancel}. */
  cancelChat(chat) {
    if (chat.ended || chat.cancelRequested) return;
    chat.cancelRequested = true;
    if (chat.phase === ChatPhase.RUNNING) this.send({ type: "cancel", id: chat.id });
    // A paused chat is cancelled right after it is resumed (sendResume).
  }

  // -- internals --------------------------------------------------------------

  send(frame) {
    if (!this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  open() {
    this.clearTimers();
    this.setStatus(this.waitingState(), { trying: true });
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (_) {
      this.ws = null;
      this.failures += 1;
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener("message", (ev) => this.onMessage(ws, ev));
    ws.addEventListener("close", () => this.onClosed(ws));
    // An "error" event is always followed by "close": nothing to do on it.
  }

  onMessage(ws, ev) {
    if (ws !== this.ws || typeof ev.data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch (_) {
      console.warn("netfly-client: ignoring a frame that is not JSON");
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "hello") {
      this.onHello(frame);
      return;
    }
    if (frame.id === null || frame.id === undefined) {
      if (frame.type === "error") this.emit("error", frame);
      return;
    }
    const chat = this.chats.get(frame.id);
    if (!chat || chat.ended) return; // unknown, or already finished
    if (Number.isInteger(frame.seq)) {
      if (frame.seq <= chat.lastSeq) return; // seen already (a replay overlap)
      chat.lastSeq = frame.seq;
    }
    if (chat.phase === ChatPhase.PAUSED) chat.phase = ChatPhase.RUNNING;
    if (TERMINAL.has(frame.type)) {
      chat.phase = ChatPhase.ENDED;
      this.chats.delete(chat.id);
    }
    if (CHAT_EVENTS.has(frame.type)) chat.emit(frame.type, frame);
    // Frame types newer than this client: their seq counts, nothing else.
  }

  onHello(frame) {
    this.hello = frame;
    this.session = typeof frame.session === "string" && frame.session !== "" ? frame.session : null;
    this.failures = 0;
    this.everConnected = true;
    this.clearTimers();
    this.setStatus(Status.CONNECTED, {});
    this.emit("hello", frame);
    for (const chat of [...this.chats.values()]) {
      if (chat.phase === ChatPhase.PAUSED) this.sendResume(chat);
    }
  }

  sendResume(chat) {
    if (!chat.session) {
      this.interrupt(chat);
      return;
    }
    chat.phase = ChatPhase.RUNNING;
    this.send({ type: "resume", session: chat.session, id: chat.id, after: chat.lastSeq });
    if (chat.cancelRequested) this.send({ type: "cancel", id: chat.id });
    chat.emit("resuming", { id: chat.id, after: chat.lastSeq });
  }

  /** Ends a chat that cannot be resumed. */
  interrupt(chat) {
    if (chat.ended) return;
    chat.phase = ChatPhase.ENDED;
    this.chats.delete(chat.id);
    chat.emit("interrupted", { id: chat.id });
  }

  onClosed(ws) {
    if (ws !== this.ws) return; // a socket we already left
    const wasReady = this.hello !== null;
    this.ws = null;
    this.hello = null;
    if (wasReady) {
      for (const chat of [...this.chats.values()]) {
        if (chat.phase !== ChatPhase.RUNNING) continue;
        if (chat.session) {
          chat.phase = ChatPhase.PAUSED;
          chat.emit("paused", { id: chat.id });
        } else {
          this.interrupt(chat);
        }
      }
    } else {
      this.failures += 1;
    }
    if (!this.closed) this.scheduleReconnect();
  }

  scheduleReconnect() {
    this.clearTimers();
    const n = Math.max(1, this.failures + 1);
    const ceiling = Math.min(this.maxMs, this.baseMs * 2 ** (n - 1));
    const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
    this.retryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.open(), delay);
    this.tickTimer = setInterval(() => this.emitWaiting(), 1000);
    this.emitWaiting();
  }

  /** connecting (never connected yet), reconnecting, or offline. */
  waitingState() {
    if (globalThis.navigator?.onLine === false || this.failures >= OFFLINE_AFTER_FAILURES) return Status.OFFLINE;
    return this.everConnected ? Status.RECONNECTING : Status.CONNECTING;
  }

  /** The status while waiting for the next attempt, with its countdown. */
  emitWaiting() {
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
    this.emit("status", { state, ...detail });
  }
}
