#!/usr/bin/env python3
"""Raw HTTP/2 frames over TLS, as an active prober sends them.

Usage: h2probe.py PORT [CASE...]

For each case (all, or the ones named), opens a TLS connection (ALPN h2, no
certificate check: this is a prober), sends the bytes, reads for one second
and prints one line: the case, whether the server closed, and the frames it
sent (type, flags, stream, the interesting payload fields).
"""
import concurrent.futures
import socket
import ssl
import struct
import sys
def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = frame(4, 0, 0)
# minimal HPACK: GET https / :authority x (literal without indexing)
def lit(name_idx, value):
    v = value.encode(); return bytes([name_idx]) + bytes([len(v)]) + v
GET = bytes([0x82, 0x87, 0x84]) + lit(0x01, "x")  # :method GET, :scheme https, :path /, :authority x
cases = {
 "bad preface": b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
 "ping": PREFACE + SETTINGS + frame(6, 0, 0, b"12345678"),
 "ping wrong length": PREFACE + SETTINGS + frame(6, 0, 0, b"1234"),
 "ping on stream 1": PREFACE + SETTINGS + frame(6, 0, 1, b"12345678"),
 "window update 0": PREFACE + SETTINGS + frame(8, 0, 0, struct.pack(">I", 0)),
 "bad hpack": PREFACE + SETTINGS + frame(1, 5, 1, b"\xff\xff\xff\xff"),
 "even stream id": PREFACE + SETTINGS + frame(1, 5, 2, GET),
 "data on idle stream": PREFACE + SETTINGS + frame(0, 1, 3, b"abc"),
 "unknown frame type": PREFACE + SETTINGS + frame(0xfa, 0, 0, b"zz") + frame(6, 0, 0, b"abcdefgh"),
 "settings bad length": PREFACE + frame(4, 0, 0, b"\x00\x01\x00"),
 "goaway from client": PREFACE + SETTINGS + frame(7, 0, 0, struct.pack(">II", 0, 0)),
 "rst idle stream": PREFACE + SETTINGS + frame(3, 0, 5, struct.pack(">I", 8)),
 "huge frame": PREFACE + SETTINGS + frame(0, 0, 1, b"a" * 20000),
 "headers no end headers then ping": PREFACE + SETTINGS + frame(1, 1, 1, GET) + frame(6, 0, 0, b"12345678"),
}
def names(data):
    out = []; i = 0
    while i + 9 <= len(data):
        l = int.from_bytes(data[i:i+3], "big"); t = data[i+3]; f = data[i+4]; sid = int.from_bytes(data[i+5:i+9], "big") & 0x7fffffff
        p = data[i+9:i+9+l]
        tn = {0:"DATA",1:"HEADERS",3:"RST",4:"SETTINGS",6:"PING",7:"GOAWAY",8:"WU"}.get(t, str(t))
        if tn == "GOAWAY": extra = "last=%d err=%d dbg=%r" % (int.from_bytes(p[:4],"big"), int.from_bytes(p[4:8],"big"), p[8:])
        elif tn == "RST": extra = "err=%d" % int.from_bytes(p,"big")
        elif tn == "SETTINGS": extra = p.hex()
        elif tn == "PING": extra = p
        elif tn == "WU": extra = int.from_bytes(p,"big")
        else: extra = "len=%d" % l
        out.append("%s f=%d s=%d %s" % (tn, f, sid, extra)); i += 9 + l
    if i != len(data): out.append("trailing %d bytes" % (len(data) - i))
    return out
QUIET = 3.0  # seconds without a byte before a connection counts as left open


def probe(port, name, data):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.sendall(data)
    s.settimeout(QUIET)
    got = b""
    closed = False
    try:
        while True:
            c = s.recv(65536)
            if not c:
                closed = True
                break
            got += c
    except (socket.timeout, ssl.SSLError, ConnectionResetError) as e:
        closed = not isinstance(e, socket.timeout)
    s.close()
    return "%s %s | %s" % (name, "closed" if closed else "open", "; ".join(names(got)))


port = int(sys.argv[1])
only = set(sys.argv[2:])
chosen = [(n, d) for n, d in cases.items() if not only or n in only]
# All cases at once (each on its own connection), printed in order.
with concurrent.futures.ThreadPoolExecutor(len(chosen) or 1) as pool:
    for line in pool.map(lambda c: probe(port, *c), chosen):
        print(line)
