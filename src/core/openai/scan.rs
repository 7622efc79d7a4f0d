//! The facts of one chat stream event in a single pass over its bytes, for
//! the shape nearly every event has. serde reads an event through several
//! layers per field (visitors, `Option`s, a `Vec` of choices) and skipping
//! the fields nobody needs costs as much as reading them; this costs a
//! fraction, and the session reads every event.
//!
//! It answers only what it has read exactly as serde would: a valid JSON
//! object, each field it knows once, each of the right type. Anything else
//! — a key with an escape, a repeated field, a surrogate escape, deep
//! nesting, a value out of shape, invalid JSON — answers `None`, and the
//! event is read through serde ([`super::event`]), which decides. The two
//! are compared on arbitrary inputs by tests and by the `restream` fuzz
//! target.

use super::event::{clean_finish, ChunkFacts};

/// Deeper than this, the event goes to serde (which has a limit of its own).
const MAX_DEPTH: u32 = 32;

/// `data`'s facts, or `None` when serde must decide.
pub(super) fn chunk_facts(data: &str) -> Option<ChunkFacts> {
    let mut scan = Scan {
        b: data.as_bytes(),
        i: 0,
        depth: 0,
    };
    let mut facts = ChunkFacts::default();
    let (mut choices, mut usage, mut error) = (false, false, false);
    scan.object(|scan, key| {
        match key {
            b"choices" => {
                once(&mut choices)?;
                if !scan.null() {
                    scan.array(|scan| scan.choice(&mut facts))?;
                }
            }
            b"usage" => {
                once(&mut usage)?;
                facts.has_usage = !scan.null();
                scan.skip_unless_null(facts.has_usage)?;
            }
            b"error" => {
                once(&mut error)?;
                facts.is_error = !scan.null();
                scan.skip_unless_null(facts.is_error)?;
            }
            _ => scan.value()?,
        }
        Some(())
    })?;
    scan.ws();
    (scan.i == scan.b.len()).then_some(facts)
}

/// A field seen for the first time (serde refuses a repeated one).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
}

impl<'a> Scan<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte after whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// Takes a `null` if one comes next.
    fn null(&mut self) -> bool {
        let null = self.peek() == Some(b'n') && self.b[self.i..].starts_with(b"null");
        if null {
            self.i += 4;
        }
        null
    }

    fn skip_unless_null(&mut self, present: bool) -> Option<()> {
        if present {
            self.value()?;
        }
        Some(())
    }

    /// An object; `field` takes each key (one without escapes) and reads
    /// its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.items(b'}', |scan| {
            let (key, escaped) = scan.string()?;
            if escaped {
                return None;
            }
            scan.eat(b':')?;
            field(scan, key)
        })
    }

    /// An array; `item` reads each item.
    fn array(&mut self, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.items(b']', item)
    }

    /// The items of an object or array, after its opening byte, up to
    /// `close`, with commas between.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.enter()?;
        if self.peek()? == close {
            self.i += 1;
        } else {
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.i += 1,
                    c if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// A string: its raw bytes between the quotes, and whether they hold an
    /// escape. Refuses what serde refuses (control characters, bad
    /// escapes) and surrogate escapes (serde's answer depends on where).
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match *self.b.get(self.i)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let unit = u16::from_str_radix(hex, 16).ok()?;
                            if hex.starts_with('+') || (0xD800..0xE000).contains(&unit) {
                                return None;
                            }
                            self.i += 4;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {}
            }
            self.i += 1;
        }
        let raw = &self.b[start..self.i];
        self.i += 1;
        Some((raw, escaped))
    }

    /// A `null` or a string: `None` for null, else its raw bytes.
    fn text(&mut self) -> Option<Option<(&'a [u8], bool)>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Any value, checked and skipped.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(|scan, _| scan.value()),
            b'[' => self.array(Self::value),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`;
    /// answers whether it was a plain unsigned integer.
    fn number(&mut self) -> Option<bool> {
        let start = self.i;
        let digits = |scan: &mut Self| {
            let from = scan.i;
            while scan.b.get(scan.i).is_some_and(u8::is_ascii_digit) {
                scan.i += 1;
            }
            scan.i > from
        };
        let negative = self.b.get(self.i) == Some(&b'-');
        if negative {
            self.i += 1;
        }
        let first = self.i;
        if !digits(self) || (self.b[first] == b'0' && self.i > first + 1) {
            return None;
        }
        let mut integer = !negative;
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            integer = false;
            digits(self).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            digits(self).then_some(())?;
        }
        (self.i > start).then_some(integer)
    }

    /// One item of `choices`, its facts added to `facts`.
    fn choice(&mut self, facts: &mut ChunkFacts) -> Option<()> {
        let mut index = None;
        let (mut finish, mut text, mut delta) = (None, None, None);
        self.object(|scan, key| {
            match key {
                b"index" => {
                    index.is_none().then_some(())?;
                    scan.ws();
                    let start = scan.i;
                    scan.number()?.then_some(())?;
                    let digits = std::str::from_utf8(&scan.b[start..scan.i]).ok()?;
                    index = Some(digits.parse::<u32>().ok()?);
                }
                b"finish_reason" => set(&mut finish, scan.text()?)?,
                b"text" => set(&mut text, scan.text()?)?,
                b"delta" => {
                    let content = if scan.null() { false } else { scan.delta()? };
                    set(&mut delta, content)?;
                }
                _ => scan.value()?,
            }
            Some(())
        })?;
        if let Some(Some((reason, escaped))) = finish {
            if !reason.is_empty() {
                if escaped {
                    return None;
                }
                let reason = std::str::from_utf8(reason).ok()?;
                facts.finished_choices.push(index.unwrap_or(0));
                if !clean_finish(reason) {
                    facts.broken_finish = Some(reason.to_owned());
                }
            }
        }
        let text = text.flatten().is_some_and(|(t, _)| !t.is_empty());
        facts.has_content |= text || delta == Some(true);
        Some(())
    }

    /// A delta object: whether it carries content (text, refusal,
    /// reasoning or tool calls).
    fn delta(&mut self) -> Option<bool> {
        let (mut content, mut refusal, mut reasoning, mut tools) = (None, None, None, None);
        self.object(|scan, key| {
            match key {
                b"content" => set(&mut content, scan.text()?)?,
                b"refusal" => set(&mut refusal, scan.text()?)?,
                b"reasoning_content" => set(&mut reasoning, scan.text()?)?,
                b"tool_calls" => {
                    let mut calls = 0;
                    if !scan.null() {
                        scan.array(|scan| {
                            calls += 1;
                            scan.value()
                        })?;
                    }
                    set(&mut tools, calls > 0)?;
                }
                _ => scan.value()?,
            }
            Some(())
        })?;
        let said =
            |t: Option<Option<(&[u8], bool)>>| t.flatten().is_some_and(|(t, _)| !t.is_empty());
        Some(said(content) || said(refusal) || said(reasoning) || tools == Some(true))
    }
}

/// How many bytes at the start of `b` need no look inside a string (not a
/// quote, a backslash or a control character), eight at a time.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each zero byte of `v`. Above the lowest zero byte a
    // bit may be set wrongly (the borrow runs on), so only the lowest is
    // read, and it is exact.
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut n = 0;
    loop {
        let v = match b.get(n..n + 8) {
            Some(eight) => u64::from_le_bytes(eight.try_into().unwrap_or_default()),
            None => {
                // The last few bytes, padded with quotes: the run stops
                // there anyway.
                let mut eight = [b'"'; 8];
                for (e, &byte) in eight.iter_mut().zip(&b[n.min(b.len())..]) {
                    *e = byte;
                }
                u64::from_le_bytes(eight)
            }
        };
        // A byte under 0x20 is zero once its low five bits are cleared.
        let stops = zeros(v ^ (ONES * u64::from(b'"')))
            | zeros(v ^ (ONES * u64::from(b'\\')))
            | zeros(v & (ONES * 0xe0));
        if stops != 0 {
            return n + (stops.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
}

/// Sets a field seen for the first time.
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

#[cfg(test)]
mod tests {
    use super::super::event::inspect_chunk_with_serde;
    use super::*;
    use proptest::prelude::*;

    /// Events of each upstream's shape, and edge cases serde answers.
    const EVENTS: &[&str] = &[
        r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" The"}}],"created":1,"id":"chatcmpl-x","model":"m","system_fingerprint":"b1","object":"chat.completion.chunk"}"#,
        r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"choices":[{"finish_reason":"stop","index":0,"delta":{}}],"usage":{"completion_tokens":9,"prompt_tokens":5},"timings":{"predicted_ms":1.5e2,"x":-0.25}}"#,
        r#"{"choices":[],"usage":{"prompt_tokens":1,"total_tokens":2}}"#,
        r#"{"choices":[{"index":1,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"a \"quote\" and \u00e9\n"},"finish_reason":"abort"}]}"#,
        r#"{"choices":[{"index":0,"text":"hi","finish_reason":"length"}]}"#,
        r#"{"error":{"message":"overloaded","code":503}}"#,
        r#" { "choices" : [ { "index" : 0 , "delta" : { "reasoning_content" : "hm" } } ] } "#,
        r#"{"usage":null,"error":null,"choices":null}"#,
        r#"{"choices":[{"index":0,"delta":{"refusal":"no"},"finish_reason":"content_filter"},{"index":2,"finish_reason":"weird"}]}"#,
        r#"{"choices":[{"index":0,"delta":{"tool_calls":[]}}]}"#,
        // serde refuses or cannot tell apart: the scan must not answer otherwise.
        r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"choices":[]}"#,
        r#"{"usage":{},"usage":null}"#,
        r#"{"choices":[{"index":-1,"delta":{"content":"x"}}]}"#,
        r#"{"choices":[{"index":1.0,"delta":{"content":"x"}}]}"#,
        r#"{"choices":[{"index":4294967296}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"x","content":"y"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"\ud83d\ude00"}}]}"#,
        r#"{"cho\u0069ces":[{"index":0,"delta":{"content":"x"}}]}"#,
        r#"{"choices":[{"index":0,"delta":{"content":"x"}}]} trailing"#,
        r#"{"choices":[{"index":0,"delta":{"content":"x"}},]}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":tru}"#,
        r#"[{"index":0}]"#,
        r#"{"choices":[{"index":0,"finish_reason":"st\u006fp"}]}"#,
        "{\"a\":\"\u{1}\"}",
        "",
        "[DONE]",
    ];

    #[test]
    fn the_scan_agrees_with_serde_wherever_it_answers() {
        for event in EVENTS {
            if let Some(fast) = chunk_facts(event) {
                assert_eq!(fast, inspect_chunk_with_serde(event), "{event}");
            }
        }
    }

    #[test]
    fn a_plain_run_stops_at_the_first_byte_to_look_at() {
        for stop in [b'"', b'\\', 0, 0x1f] {
            for at in 0..20 {
                let mut b = vec![b'a'; 20];
                b[at] = stop;
                b[19] = b'"';
                assert_eq!(plain_run(&b), at, "{stop:#x} at {at}");
            }
        }
        assert_eq!(
            plain_run(&[0x20, 0x7f, 0x80, 0xff, b'e', b'!', b'#', b'[', b']']),
            9
        );
    }

    #[test]
    fn the_scan_answers_for_every_usual_shape() {
        // The first twelve are what upstreams send; each must not fall back.
        for event in &EVENTS[..12] {
            assert!(chunk_facts(event).is_some(), "{event}");
        }
        let facts = chunk_facts(EVENTS[10]).unwrap();
        assert_eq!(facts.finished_choices, vec![0, 2]);
        assert_eq!(facts.broken_finish.as_deref(), Some("weird"));
        assert!(facts.has_content);
    }

    /// Pieces of JSON put together at random: valid, invalid, odd.
    fn jsonish() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"choices\"",
            "\"index\"",
            "\"delta\"",
            "\"content\"",
            "\"text\"",
            "\"finish_reason\"",
            "\"usage\"",
            "\"error\"",
            "\"tool_calls\"",
            "\"refusal\"",
            "\"reasoning_content\"",
            "\"stop\"",
            "\"x\"",
            "\"\"",
            "\"\\n\"",
            "\"\\u0041\"",
            "\"\\ud800\"",
            "0",
            "7",
            "-1",
            "1.5",
            "2e3",
            "01",
            "null",
            "true",
            "false",
            "4294967295",
            "4294967296",
        ]);
        prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
    }

    fn shaped() -> impl Strategy<Value = String> {
        let text = prop::sample::select(vec!["null", "\"\"", "\"a\"", "\"\\\"\"", "3", "{}"]);
        (text.clone(), text.clone(), text, 0u64..5_000_000_000, any::<bool>()).prop_map(
            |(content, finish, refusal, index, usage)| {
                format!(
                    r#"{{"choices":[{{"index":{index},"delta":{{"content":{content},"refusal":{refusal}}},"finish_reason":{finish}}}]{}}}"#,
                    if usage { r#","usage":{"n":1}"# } else { "" }
                )
            },
        )
    }

    proptest! {
        #[test]
        fn arbitrary_json_pieces_agree(data in prop_oneof![jsonish(), shaped()]) {
            if let Some(fast) = chunk_facts(&data) {
                prop_assert_eq!(fast, inspect_chunk_with_serde(&data), "{}", data);
            }
        }
    }
}
