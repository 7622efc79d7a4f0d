// Progressive markdown: a finished block never changes as the text grows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { splitBlocks, parseBlock, inline } from "../markdown.js";

const ANSWER = [
  "# Tides",
  "",
  "The **moon** pulls the sea; the *sun* helps a little.",
  "",
  "- high tide",
  "- low tide, twice",
  "  a day",
  "",
  "```js",
  "const tide = moon();",
  "",
  "console.log(tide);",
  "```",
  "1. spring tides",
  "2. neap tides",
  "",
  "Use `tide()` to ask.",
].join("\n");

test("finished blocks never change while the answer grows", () => {
  let before = [];
  for (let n = 0; n <= ANSWER.length; n++) {
    const { done } = splitBlocks(ANSWER.slice(0, n));
    assert.deepEqual(done.slice(0, before.length), before, `at ${n}`);
    before = done;
  }
  const { done, open } = splitBlocks(ANSWER);
  assert.equal(done.length, 5);
  assert.equal(open, "Use `tide()` to ask.");
});

test("a blank line inside a code fence does not end it", () => {
  const { done, open } = splitBlocks("```\na\n\nb\n");
  assert.deepEqual(done, []);
  assert.equal(open, "```\na\n\nb\n");
  assert.deepEqual(parseBlock(open), { t: "pre", c: [{ t: "code", c: [{ text: "a\n\nb\n" }] }] });
});

test("blocks", () => {
  assert.equal(parseBlock("# Tides").t, "h3");
  const list = parseBlock("- high\n- low, twice\n  a day");
  assert.equal(list.t, "ul");
  assert.deepEqual(list.c.map((li) => li.c[0].text), ["high", "low, twice a day"]);
  assert.equal(parseBlock("1. one\n2. two").t, "ol");
  const p = parseBlock("one\ntwo");
  assert.deepEqual(p.c.map((n) => n.t ?? n.text), ["one", "br", "two"]);
});

test("inline code, bold and italic; markup in text stays text", () => {
  assert.deepEqual(inline("a `b*c*` **d** _e_ <img src=x>"), [
    { text: "a " },
    { t: "code", c: [{ text: "b*c*" }] },
    { text: " " },
    { t: "strong", c: [{ text: "d" }] },
    { text: " " },
    { t: "em", c: [{ text: "e" }] },
    { text: " <img src=x>" },
  ]);
  // An unclosed marker (mid-stream) is text until it closes.
  assert.deepEqual(inline("**bo"), [{ text: "**bo" }]);
});
