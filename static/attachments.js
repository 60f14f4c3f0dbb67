// Images attached to the next message: file picker, paste and drag-and-drop,
// checked for type and size, held as data URLs, shown as thumbnails.

import { el, button, formatBytes } from "./dom.js";

/** The image types a message may carry. */
export const IMAGE_TYPES = Object.freeze(["image/png", "image/jpeg", "image/gif", "image/webp"]);
/**
 * The longest data URL of one image when hello names none
 * (`hello.max_image_bytes`, which bounds the data URL, base64 and all).
 */
export const DEFAULT_MAX_IMAGE_BYTES = 1024 * 1024;

/** The largest file whose `data:<type>;base64,` URL fits in `maxUrl` characters. */
export function maxFileBytes(maxUrl, type) {
  const room = maxUrl - `data:${type};base64,`.length;
  return Math.max(0, Math.floor(room / 4) * 3);
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error || new Error("read failed"));
    reader.readAsDataURL(file);
  });
}

/** The pending attachments of the composer. */
export class Attachments {
  /**
   * @param {object} dom
   * @param {HTMLElement} dom.list the thumbnails (a <ul>)
   * @param {HTMLInputElement} dom.input the hidden file input
   * @param {HTMLButtonElement} dom.button the Attach button
   * @param {HTMLElement} dom.error where errors are shown (polite live region)
   * @param {HTMLElement} dom.dropZone highlighted while files are dragged over the page
   * @param {HTMLElement} dom.focusAfterRemove focused when the last thumbnail is removed
   * @param {() => void} onChange
   */
  constructor(dom, onChange) {
    this.dom = dom;
    this.onChange = onChange;
    /** @type {Array<{name: string, type: string, size: number, url: string}>} */
    this.items = [];
    this.maxBytes = DEFAULT_MAX_IMAGE_BYTES;
    this.bind();
  }

  /** Sets the per-image limit (from hello), or the default. */
  setLimit(bytes) {
    this.maxBytes = Number.isInteger(bytes) && bytes > 0 ? bytes : DEFAULT_MAX_IMAGE_BYTES;
  }

  bind() {
    const d = this.dom;
    d.input.accept = IMAGE_TYPES.join(",");
    d.button.addEventListener("click", () => d.input.click());
    d.input.addEventListener("change", () => {
      const files = [...(d.input.files || [])];
      d.input.value = "";
      this.addFiles(files);
    });
    const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
    document.addEventListener("dragover", (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "copy";
      d.dropZone.classList.add("dragging");
    });
    document.addEventListener("dragleave", (ev) => {
      if (ev.relatedTarget === null) d.dropZone.classList.remove("dragging");
    });
    document.addEventListener("drop", (ev) => {
      d.dropZone.classList.remove("dragging");
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      this.addFiles([...ev.dataTransfer.files]);
    });
  }

  /** Handles a paste into the message box: images are attached. */
  onPaste(ev) {
    const data = ev.clipboardData;
    if (!data) return;
    const files = [...data.items].filter((i) => i.kind === "file").map((i) => i.getAsFile()).filter(Boolean);
    if (files.length === 0) return;
    if (!data.types.includes("text/plain")) ev.preventDefault();
    this.addFiles(files);
  }

  /** Checks and reads files; errors name the file and the limit. */
  async addFiles(files) {
    const errors = [];
    for (const file of files) {
      const name = file.name || "pasted image";
      if (!IMAGE_TYPES.includes(file.type)) {
        errors.push(`${name}: only PNG, JPEG, GIF and WebP images can be attached.`);
        continue;
      }
      const limit = maxFileBytes(this.maxBytes, file.type);
      const tooLarge = () => `${name} is too large (${formatBytes(file.size)}); an image can be at most ${formatBytes(limit)}.`;
      if (file.size > limit) {
        errors.push(tooLarge());
        continue;
      }
      try {
        const url = await readAsDataUrl(file);
        if (url.length > this.maxBytes) {
          errors.push(tooLarge());
          continue;
        }
        this.items.push({ name, type: file.type, size: file.size, url });
      } catch (_) {
        errors.push(`${name} could not be read.`);
      }
    }
    this.showError(errors.join(" "));
    this.renderList();
    this.onChange();
  }

  remove(index) {
    this.items.splice(index, 1);
    this.renderList();
    const buttons = this.dom.list.querySelectorAll("button.remove");
    const next = buttons[Math.min(index, buttons.length - 1)];
    (next || this.dom.focusAfterRemove).focus();
    this.onChange();
  }

  /** Takes the attachments for a message (and empties the composer's list). */
  take() {
    const items = this.items.map(({ name, type, url }) => ({ name, type, url }));
    this.clear();
    return items;
  }

  clear() {
    this.items = [];
    this.showError("");
    this.renderList();
  }

  showError(text) {
    if (this.dom.error.textContent !== text) this.dom.error.textContent = text;
    this.dom.error.hidden = text === "";
  }

  renderList() {
    const list = this.dom.list;
    list.replaceChildren(...this.items.map((item, i) => {
      const li = el("li", "attachment");
      const img = el("img", "thumb");
      img.src = item.url;
      img.alt = item.name;
      const remove = button("ghost small remove", "×", `Remove image ${item.name}`);
      remove.addEventListener("click", () => this.remove(i));
      li.append(img, remove);
      return li;
    }));
    list.hidden = this.items.length === 0;
  }
}
