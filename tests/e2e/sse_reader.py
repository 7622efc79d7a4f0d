"""An SSE reader for the resume tests and bench/resume.py: it keeps only
whole events (a connection cut mid-event leaves the rest unread) and
decodes gzip itself, chunk by chunk, as a client on a dropped link would."""

import zlib


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
