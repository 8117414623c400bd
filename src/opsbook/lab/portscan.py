"""Connect-scan TCP ports of one address; print the open ones as JSON. Run inside a lab host's netns."""

from __future__ import annotations

import json
import selectors
import socket
import sys


def scan(ip: str, ports: list[int], timeout: float = 2.0, batch: int = 256) -> list[int]:
    found: list[int] = []
    for i in range(0, len(ports), batch):
        sel = selectors.DefaultSelector()
        socks = []
        for port in ports[i : i + batch]:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((ip, port))
            sel.register(s, selectors.EVENT_WRITE, port)
            socks.append(s)
        pending = len(socks)
        while pending:
            events = sel.select(timeout)
            if not events:
                break  # the rest were dropped silently: filtered
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    found.append(int(key.data))
                sel.unregister(sock)
                pending -= 1
        for s in socks:
            s.close()
    return sorted(found)


if __name__ == "__main__":
    target = sys.argv[1]
    spec = sys.argv[2] if len(sys.argv) > 2 else "1-1024"
    ports: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ports.extend(range(int(lo), int(hi or lo) + 1))
    print(json.dumps(scan(target, ports)))
