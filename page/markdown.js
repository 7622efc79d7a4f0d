// Progressive markdown: an answer's text grows, its blocks are rendered as
// they finish and never again; only the last, open block is redrawn on
// each token. A small subset (paragraphs, headings, lists, code fences,
// inline code, bold, italic), built as DOM nodes from text, never as HTML.

/** Cuts `text` into blocks: those finished (closed by a blank line or a
 * closing fence) and the one still open. */
export function splitBlocks(text) {
  const done = [];
  let current = [];
  let fence = false;
  const lines = text.split("\n");
  // The last line may still grow: it is only part of the open block.
  const last = lines.pop();
  for (const line of lines) {
    if (fence) {
      current.push(line);
      if (/^\s*```\s*$/.test(line)) {
        done.push(current.join("\n"));
        current = [];
        fence = false;
      }
    } else if (/^\s*```/.test(line)) {
      if (current.length) done.push(current.join("\n"));
      current = [line];
      fence = true;
    } else if (line.trim() === "") {
      if (current.length) done.push(current.join("\n"));
      current = [];
    } else {
      current.push(line);
    }
  }
  current.push(last);
  const open = current.join("\n");
  return { done, open: fence || open.trim() ? open : "" };
}

/** One block as a tree: {t: tag, c: children} or {text}. */
export function parseBlock(src) {
  if (/^\s*```/.test(src)) {
    const lines = src.split("\n").slice(1);
    if (lines.length && /^\s*```\s*$/.test(lines[lines.length - 1])) lines.pop();
    return { t: "pre", c: [{ t: "code", c: [{ text: lines.join("\n") }] }] };
  }
  const heading = src.match(/^(#{1,6})\s+(.*)$/s);
  if (heading) return { t: `h${Math.min(heading[1].length + 2, 6)}`, c: inline(heading[2]) };
  const lines = src.split("\n");
  const bullet = /^\s*[-*+]\s+/;
  const number = /^\s*\d+[.)]\s+/;
  for (const [marker, tag] of [
    [bullet, "ul"],
    [number, "ol"],
  ]) {
    if (marker.test(lines[0])) {
      const items = [];
      for (const line of lines) {
        if (marker.test(line)) items.push(line.replace(marker, ""));
        else items[items.length - 1] += ` ${line.trim()}`;
      }
      return { t: tag, c: items.map((i) => ({ t: "li", c: inline(i) })) };
    }
  }
  const c = [];
  lines.forEach((line, i) => {
    if (i) c.push({ t: "br", c: [] });
    c.push(...inline(line));
  });
  return { t: "p", c };
}

/** Inline code, bold and italic; anything else is text. */
export function inline(src) {
  const out = [];
  const re = /`([^`]+)`|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_/g;
  let at = 0;
  for (const m of src.matchAll(re)) {
    if (m.index > at) out.push({ text: src.slice(at, m.index) });
    if (m[1] !== undefined) out.push({ t: "code", c: [{ text: m[1] }] });
    else if (m[2] !== undefined || m[3] !== undefined) out.push({ t: "strong", c: inline(m[2] ?? m[3]) });
    else out.push({ t: "em", c: inline(m[4] ?? m[5]) });
    at = m.index + m[0].length;
  }
  if (at < src.length) out.push({ text: src.slice(at) });
  return out;
}

/** The tree as DOM nodes of `doc`. */
export function toDom(doc, node) {
  if (node.text !== undefined) return doc.createTextNode(node.text);
  const el = doc.createElement(node.t);
  for (const child of node.c) el.appendChild(toDom(doc, child));
  return el;
}

/** Renders a growing answer into `container`: finished blocks once, the
 * open block on every update, and a typing cursor at its end. */
export class Progressive {
  constructor(container) {
    this.container = container;
    this.doc = container.ownerDocument;
    this.rendered = 0;
    this.open = null;
    this.openSrc = "";
    this.cursor = this.doc.createElement("span");
    this.cursor.className = "cursor";
    this.container.appendChild(this.cursor);
  }

  update(text) {
    const { done, open } = splitBlocks(text);
    for (; this.rendered < done.length; this.rendered++) {
      const el = toDom(this.doc, parseBlock(done[this.rendered]));
      this.container.insertBefore(el, this.open || this.cursor);
    }
    if (open !== this.openSrc) {
      if (this.open) this.open.remove();
      this.open = open ? toDom(this.doc, parseBlock(open)) : null;
      this.openSrc = open;
      if (this.open) this.container.appendChild(this.open);
    }
    cursorHost(this.open || this.container).appendChild(this.cursor);
  }

  /** The answer ended: the cursor goes. */
  finish() {
    this.cursor.remove();
  }
}

/** Where the cursor goes in a block: after its last text. */
function cursorHost(el) {
  let host = el;
  while (host.lastElementChild && ["UL", "OL", "LI", "PRE", "CODE"].includes(host.lastElementChild.tagName) && host.tagName !== "CODE") {
    host = host.lastElementChild;
  }
  return host;
}
