"""A fault-injecting, strict HTTP/1.1 proxy in front of the real model
server, for the end-to-end tests: requests whose body contains CUT_MARKER
get the first CUT_AFTER bytes of the upstream's response body and then a
closed connection (an upstream failing mid-stream), those whose body
contains CUT_EARLY_MARKER the first CUT_EARLY_AFTER bytes (a short complete
answer cut part-way); every other request is passed through untouched. Like servers that do not read chunked request
bodies (Python's http.server, some embedded servers and gateways), it
answers 411 Length Required to a request body without Content-Length. One
request per connection (it answers with `Connection: close`).

  python cut_proxy.py --port 18082 --upstream 127.0.0.1:18081
"""
import argparse
import asyncio

CUT_MARKER = b"cut-me"
CUT_AFTER = 1200
CUT_EARLY_MARKER = b"cut-early"
CUT_EARLY_AFTER = 100


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(h.split(":", 1)) for h in lines[1:] if ":" in h]
    return lines[0], [(k.strip(), v.strip()) for k, v in headers]


def header(headers, name):
    return next((v for k, v in headers if k.lower() == name), None)


async def handle(client_r, client_w, upstream):
    try:
        start, headers = await read_head(client_r)
        if header(headers, "transfer-encoding") is not None:
            client_w.write(b"HTTP/1.1 411 Length Required\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 52\r\nConnection: close\r\n\r\n"
                           b'{"error":{"message":"a Content-Length is required"}}')
            await client_w.drain()
            return
        else:
            body = await client_r.readexactly(int(header(headers, "content-length") or 0))
        host, port = upstream.split(":")
        up_r, up_w = await asyncio.open_connection(host, int(port))
        hop = ("connection", "keep-alive", "transfer-encoding", "content-length")
        kept = [(k, v) for k, v in headers if k.lower() not in hop] + [("Content-Length", str(len(body)))]
        up_w.write((start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "Connection: close\r\n\r\n").encode("latin-1") + body)
        await up_w.drain()
        status, rheaders = await read_head(up_r)
        rkept = [(k, v) for k, v in rheaders if k.lower() not in ("connection", "keep-alive")]
        client_w.write((status + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in rkept) + "Connection: close\r\n\r\n").encode("latin-1"))
        budget = CUT_AFTER if CUT_MARKER in body else CUT_EARLY_AFTER if CUT_EARLY_MARKER in body else None
        while True:
            chunk = await up_r.read(65536)
            if not chunk:
                break
            if budget is not None:
                chunk = chunk[:budget]
                budget -= len(chunk)
            client_w.write(chunk)
            await client_w.drain()
            if budget == 0:
                break
        up_w.close()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        client_w.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    server = await asyncio.start_server(lambda r, w: handle(r, w, a.upstream), "127.0.0.1", a.port)
    async with server:
        await server.serve_forever()


asyncio.run(main())
