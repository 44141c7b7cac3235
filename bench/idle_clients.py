#!/usr/bin/env python3
"""Opens N idle client connections to a Postgres front end (SCRAM-SHA-256, written here with
the standard library only), holds them all open at once, and prints the resident set size of
process PID before and after, as "N RSS_BEFORE_KIB RSS_AFTER_KIB SECONDS".

Usage: idle_clients.py HOST PORT USER DATABASE PID N   (password in $PGPASSWORD)
"""
import asyncio
import base64
import hashlib
import hmac
import os
import resource
import struct
import sys
import time

IN_FLIGHT = 200  # logins at once
SALTED = {}  # (salt, iterations) -> SaltedPassword: every login of one role shares it


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def message(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


async def read_message(reader):
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:])
    return head[:1], await reader.readexactly(length - 4)


async def login(host, port, user, database, password):
    reader, writer = await asyncio.open_connection(host, port)
    params = b"user\0" + user + b"\0database\0" + database + b"\0\0"
    writer.write(struct.pack("!II", len(params) + 8, 3 << 16) + params)
    tag, body = await read_message(reader)
    if tag != b"R" or body[:4] != struct.pack("!I", 10):
        raise RuntimeError(f"expected AuthenticationSASL, got {tag} {body!r}")
    first_bare = "n=,r=" + base64.b64encode(os.urandom(18)).decode()
    first = ("n,," + first_bare).encode()
    writer.write(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first))
    tag, body = await read_message(reader)
    if tag != b"R" or body[:4] != struct.pack("!I", 11):
        raise RuntimeError(f"expected SASLContinue, got {tag} {body!r}")
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    key = (attrs["s"], int(attrs["i"]))
    if key not in SALTED:
        SALTED[key] = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(key[0]), key[1])
    client_key = hmac.new(SALTED[key], b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = "c=biws,r=" + attrs["r"]
    auth = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth, "sha256").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    writer.write(message(b"p", f"{without_proof},p={proof}".encode()))
    while True:
        tag, body = await read_message(reader)
        if tag == b"E":
            raise RuntimeError(f"login failed: {body!r}")
        if tag == b"Z":
            return reader, writer


async def main():
    host, port, user, database, pid, n = sys.argv[1:7]
    port, pid, n = int(port), int(pid), int(n)
    password = os.environ["PGPASSWORD"].encode()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    before = rss_kib(pid)
    gate = asyncio.Semaphore(IN_FLIGHT)
    started = time.monotonic()

    async def one():
        async with gate:
            return await login(host, port, user.encode(), database.encode(), password)

    conns = await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.monotonic() - started
    after = rss_kib(pid)
    open_now = sum(1 for reader, _ in conns if not reader.at_eof())
    if open_now != n:
        raise RuntimeError(f"only {open_now} of {n} connections still open")
    print(n, before, after, f"{seconds:.1f}")
    for _, writer in conns:
        writer.write(message(b"X", b""))
        writer.close()


asyncio.run(main())
