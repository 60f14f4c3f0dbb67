// Small DOM helpers shared by the page's modules.

/**
 * A new element with an optional class and text (as text, never HTML).
 * @param {string} tag
 * @param {string} [className]
 * @param {string} [text]
 * @returns {HTMLElement}
 */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A `<button type="button">` with a class, a label, and an optional accessible name. */
export function button(className, label, ariaLabel) {
  const b = el("button", className, label);
  b.type = "button";
  if (ariaLabel) b.setAttribute("aria-label", ariaLabel);
  return b;
}

/**
 * Copies text to the clipboard exactly; falls back to a hidden textarea
 * where the async clipboard is unavailable (insecure origins).
 * @param {string} text
 * @returns {Promise<boolean>} whether it worked
 */
export async function copyText(text) {
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
  const focused = document.activeElement;
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (_) {
    ok = false;
  }
  ta.remove();
  if (focused instanceof HTMLElement) focused.focus();
  return ok;
}

/** Shows "Copied" (or "Copy failed") on a copy button for a moment. */
export function flashCopied(btn, ok) {
  const label = btn.dataset.label || btn.textContent;
  btn.dataset.label = label;
  btn.textContent = ok ? "Copied" : "Copy failed";
  clearTimeout(Number(btn.dataset.timer) || 0);
  btn.dataset.timer = String(setTimeout(() => { btn.textContent = label; }, 1500));
}

/** Human-readable bytes: 1.5 MB, 820 KB. */
export function formatBytes(n) {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(n % (1024 * 1024) === 0 ? 0 : 1)} MB`;
  if (n >= 1024) return `${Math.round(n / 1024)} KB`;
  return `${n} bytes`;
}
