// The conversation kept in the browser's storage, so that a reload brings
// it back and an answer in flight resumes (PROTOCOL.md §3.3). One key,
// written whole: an answer's text and the seq it was rendered up to are
// always saved together.

/** The storage key (versioned: a later format uses another key). */
export const STORAGE_KEY = "netfly.conversation.v1";
/** Saves at most this often while an answer streams. */
const THROTTLE_MS = 400;

export class ConversationStore {
  /**
   * @param {() => object} snapshot the conversation to save, built when saving
   * @param {Storage|null} [storage] default: localStorage (null when unavailable)
   */
  constructor(snapshot, storage) {
    this.snapshot = snapshot;
    this.storage = storage === undefined ? ConversationStore.defaultStorage() : storage;
    this.timer = null;
    this.lastSave = 0;
  }

  static defaultStorage() {
    try {
      const s = window.localStorage;
      s.getItem(STORAGE_KEY);
      return s;
    } catch (_) {
      return null; // storage disabled: the page works, without persistence
    }
  }

  /** The saved conversation, or null (none, unreadable, or another format). */
  load() {
    if (!this.storage) return null;
    try {
      const raw = this.storage.getItem(STORAGE_KEY);
      if (!raw) return null;
      const data = JSON.parse(raw);
      return data && data.v === 1 && Array.isArray(data.turns) ? data : null;
    } catch (_) {
      return null;
    }
  }

  /** Saves soon (throttled): call after every change. */
  schedule() {
    if (!this.storage || this.timer !== null) return;
    const wait = Math.max(0, this.lastSave + THROTTLE_MS - Date.now());
    this.timer = setTimeout(() => this.saveNow(), wait);
  }

  /** Saves at once (pagehide, the end of an answer, New chat). */
  saveNow() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (!this.storage) return;
    this.lastSave = Date.now();
    const data = { v: 1, savedAt: new Date().toISOString(), ...this.snapshot() };
    if (data.turns.length === 0) {
      this.clear();
      return;
    }
    try {
      this.storage.setItem(STORAGE_KEY, JSON.stringify(data));
    } catch (_) {
      // Over the quota: keep the text, drop the images' data.
      try {
        this.storage.setItem(STORAGE_KEY, JSON.stringify(withoutImages(data)));
      } catch (err) {
        console.warn("netfly: could not save the conversation", err);
      }
    }
  }

  /** Forgets the saved conversation (New chat). */
  clear() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    try {
      this.storage?.removeItem(STORAGE_KEY);
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
