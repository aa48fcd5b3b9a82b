#!/usr/bin/env python3
"""Fetch one URL over HTTP/3 with aioquic (an independent QUIC/HTTP/3 stack).

Usage: h3get.py URL --connect IP:PORT --cafile CERT [--method GET|HEAD|POST] [--data TEXT]
                 [--timeout SECONDS]

Prints the status line, the response headers (one "name: value" per line),
a blank line, then the body. Exits non-zero on any connection error.
"""
import argparse
import asyncio
import ssl
import sys
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.responses = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                resp = self.responses.setdefault(ev.stream_id, {"headers": [], "body": bytearray()})
                if isinstance(ev, HeadersReceived):
                    resp["headers"].extend(ev.headers)
                else:
                    resp["body"] += ev.data
                if ev.stream_ended and ev.stream_id in self.waiters:
                    self.waiters.pop(ev.stream_id).set_result(resp)

    async def request(self, method, url, data, timeout):
        u = urlparse(url)
        sid = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", u.netloc.encode()),
            (b":path", (u.path or "/").encode() + (b"?" + u.query.encode() if u.query else b"")),
            (b"user-agent", b"aioquic"),
        ]
        self.h3.send_headers(sid, headers, end_stream=data is None)
        if data is not None:
            self.h3.send_data(sid, data.encode(), end_stream=True)
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        self.transmit()
        return await asyncio.wait_for(fut, timeout)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--connect", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--timeout", type=float, default=10)
    a = p.parse_args()
    u = urlparse(a.url)
    host, port = a.connect.rsplit(":", 1)
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=u.hostname)
    cfg.verify_mode = ssl.CERT_REQUIRED
    cfg.load_verify_locations(a.cafile)
    async with connect(host, int(port), configuration=cfg, create_protocol=Client) as client:
        resp = await client.request(a.method, a.url, a.data, a.timeout)
    status = dict(resp["headers"]).get(b":status", b"?").decode()
    out = sys.stdout.buffer
    out.write(f"HTTP/3 {status}\n".encode())
    for k, v in resp["headers"]:
        if not k.startswith(b":"):
            out.write(k + b": " + v + b"\n")
    out.write(b"\n")
    out.write(resp["body"])


if __name__ == "__main__":
    asyncio.run(main())
