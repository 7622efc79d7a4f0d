"""What the resume tests and bench/resume.py share: an SSE reader that
keeps only whole events (a connection cut mid-event leaves the rest
unread) and decodes gzip itself, chunk by chunk, as a client on a dropped
link would; the text of `compact` events; and the text of the recorded
stream the cutting proxy replays."""

import json
import os
import zlib

VECTOR = os.path.join(os.path.dirname(__file__), "..", "vectors", "llamacpp_chat.sse")


def text_of(events):
    """The token text of `compact` events."""
    return "".join(json.loads(e["data"]) for e in events if "event" not in e and "data" in e)


def vector_text():
    """The text of the recorded stream (tests/vectors/llamacpp_chat.sse)."""
    text = ""
    for line in open(VECTOR).read().split("\n"):
        if line.startswith("data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices:
                text += choices[0]["delta"].get("content") or ""
    return text


class Reader:
    def __init__(self, coding):
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if coding == "gzip" else None
        self.buf = b""

    def feed(self, chunk):
        """The events `chunk` completes, each a dict of its fields."""
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        self.buf += chunk
        events = []
        while b"\n\n" in self.buf:
            block, self.buf = self.buf.split(b"\n\n", 1)
            fields = {}
            for line in block.decode().split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name, value[1:] if value.startswith(" ") else value)
            if fields:
                events.append(fields)
        return events
