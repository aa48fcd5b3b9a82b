#!/usr/bin/env python3
"""Counts client->server->client turns in a capture of one connection.

Usage: count_turns.py PCAP SERVER_PORT FIRST_BYTE_EPOCH_US

A "flight" is a run of packets in one direction. Packets that carry no
protocol progress are ignored: TCP segments without payload (other than SYN
and SYN-ACK) and, on UDP, datagrams under 64 bytes (QUIC ACK-only packets).
A round trip is a client flight answered by a server flight. Counting stops
at the server packet that delivered the first tunnel byte (the last server
packet at or before the time the client reported it).
"""
import sys

from scapy.all import IP, TCP, UDP, rdpcap

pcap, port, first_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
turns = 0
last = None
for p in rdpcap(pcap):
    if float(p.time) * 1e6 > first_us:
        break
    if TCP in p:
        seg = p[TCP]
        syn = bool(int(seg.flags) & 0x02)
        if len(bytes(seg.payload)) == 0 and not syn:
            continue
        to_server = seg.dport == port
    elif UDP in p:
        dgram = p[UDP]
        if len(bytes(dgram.payload)) < 64:
            continue
        to_server = dgram.dport == port
    else:
        continue
    direction = "c2s" if to_server else "s2c"
    if direction == "s2c" and last == "c2s":
        turns += 1
    last = direction
print(turns)
