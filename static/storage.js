// The conversation kept in the browser's storage, so that a reload brings
// it back and an answer in flight resumes (PROTOCOL.md §3.3).
//
// Each conversation is one localStorage key, written whole: an answer's
// text and the seq it was rendered up to are always saved together. A tab
// holds its conversation with a Web Lock for as long as it is open, so a
// second tab starts its own conversation instead of sharing (and
// overwriting) the first one's; a reload, or a new tab after the browser
// was closed, takes the most recent conversation no open tab holds.

/** Key prefix of saved conversations (versioned: a later format uses another). */
export const STORAGE_PREFIX = "netfly.conversation.v1.";
/** This tab's conversation id (sessionStorage: survives a reload of the tab). */
export const TAB_KEY = "netfly.conversation-id";
/** Saves at most this often while an answer streams. */
const THROTTLE_MS = 400;
/** Conversations kept; older ones are forgotten. */
const KEEP = 10;

function storageOr(name) {
  try {
    const s = window[name];
    s.getItem(TAB_KEY);
    return s;
  } catch (_) {
    return null; // storage disabled: the page works, without persistence
  }
}

function newId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class ConversationStore {
  /** @param {() => object} snapshot the conversation to save, built when saving */
  constructor(snapshot) {
    this.snapshot = snapshot;
    this.storage = storageOr("localStorage");
    this.session = storageOr("sessionStorage");
    this.id = null;
    this.timer = null;
    this.lastSave = 0;
  }

  get key() {
    return STORAGE_PREFIX + this.id;
  }

  /**
   * Picks this tab's conversation: its own (after a reload), else the most
   * recent one no other open tab holds, else a new one; and holds it.
   */
  async open() {
    if (!this.storage) return;
    const own = this.session?.getItem(TAB_KEY);
    const saved = this.savedIds();
    const candidates = [...new Set([own, ...saved].filter(Boolean))];
    const locks = navigator.locks;
    let chosen = null;
    if (!locks) {
      chosen = candidates[0] || null; // no Web Locks (insecure origin): the latest
    } else {
      for (const id of candidates) {
        if (await this.hold(id)) {
          chosen = id;
          break;
        }
      }
    }
    if (chosen === null) {
      chosen = newId();
      if (locks) await this.hold(chosen);
    }
    this.id = chosen;
    this.session?.setItem(TAB_KEY, chosen);
    this.prune(saved);
  }

  /** Takes the lock of conversation `id` for this page's life; false if another tab has it. */
  hold(id) {
    return new Promise((resolve) => {
      navigator.locks
        .request(`netfly-conversation-${id}`, { ifAvailable: true }, (lock) => {
          resolve(lock !== null);
          // Held until the page goes away.
          return lock ? new Promise(() => {}) : undefined;
        })
        .catch(() => resolve(false));
    });
  }

  /** Ids of saved conversations, most recent first. */
  savedIds() {
    const found = [];
    for (let i = 0; i < this.storage.length; i++) {
      const key = this.storage.key(i);
      if (!key || !key.startsWith(STORAGE_PREFIX)) continue;
      let savedAt = "";
      try {
        savedAt = String(JSON.parse(this.storage.getItem(key)).savedAt || "");
      } catch (_) {
        savedAt = "";
      }
      found.push({ id: key.slice(STORAGE_PREFIX.length), savedAt });
    }
    found.sort((a, b) => (a.savedAt < b.savedAt ? 1 : a.savedAt > b.savedAt ? -1 : 0));
    return found.map((f) => f.id);
  }

  prune(saved) {
    for (const id of saved.slice(KEEP)) {
      if (id !== this.id) this.storage.removeItem(STORAGE_PREFIX + id);
    }
  }

  /** The saved conversation, or null (none, unreadable, or another format). */
  load() {
    if (!this.storage || !this.id) return null;
    try {
      const raw = this.storage.getItem(this.key);
      if (!raw) return null;
      const data = JSON.parse(raw);
      return data && data.v === 1 && Array.isArray(data.turns) ? data : null;
    } catch (_) {
      return null;
    }
  }

  /** Saves soon (throttled): call after every change. */
  schedule() {
    if (!this.storage || !this.id || this.timer !== null) return;
    const wait = Math.max(0, this.lastSave + THROTTLE_MS - Date.now());
    this.timer = setTimeout(() => this.saveNow(), wait);
  }

  /** Saves at once (pagehide, the end of an answer, Stop). */
  saveNow() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.storage || !this.id) return;
    this.lastSave = Date.now();
    const data = { v: 1, savedAt: new Date().toISOString(), ...this.snapshot() };
    if (data.turns.length === 0) {
      this.clear();
      return;
    }
    try {
      this.storage.setItem(this.key, JSON.stringify(data));
    } catch (_) {
      // Over the quota: keep the text, drop the images' data.
      try {
        this.storage.setItem(this.key, JSON.stringify(withoutImages(data)));
      } catch (err) {
        console.warn("netfly: could not save the conversation", err);
      }
    }
  }

  /** Forgets this tab's saved conversation (New chat). */
  clear() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.storage || !this.id) return;
    try {
      this.storage.removeItem(this.key);
    } catch (_) {
      // nothing to forget
    }
  }
}

function withoutImages(data) {
  return {
    ...data,
    turns: data.turns.map((t) => (t.role === "user" && Array.isArray(t.images)
      ? { ...t, images: t.images.map((i) => ({ name: i.name, type: i.type, url: null })) }
      : t)),
  };
}
