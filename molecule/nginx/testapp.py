#!/usr/bin/env python3
"""Tiny app upstream for the nginx and acme scenarios: GET/POST answer "<name> <path>", over TCP or a unix socket.

Usage: testapp.py NAME HOST:PORT | testapp.py NAME unix:/path.sock
Known paths answer 200 (/, /big, /login..., /admin..., /auth...); everything else 404, as an app would.
"""

import http.server
import os
import socketserver
import sys

NAME = sys.argv[1]
LISTEN = sys.argv[2]
KNOWN = ("/login", "/admin", "/auth")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        while length > 0:
            length -= len(self.rfile.read(min(length, 65536)))
        path = self.path.split("?", 1)[0]
        status = 200 if path in ("/", "/big") or path.startswith(KNOWN) else 404
        body = f"{NAME} {self.path}\n"
        if path == "/big":
            body += "lorem ipsum dolor sit amet " * 400 + "\n"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = answer

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if LISTEN.startswith("unix:"):
    path = LISTEN[len("unix:"):]
    if os.path.exists(path):
        os.unlink(path)
    server: socketserver.BaseServer = UnixServer(path, Handler)
    os.chmod(path, 0o666)  # noqa: S103 - nginx (www-data) connects to it
else:
    host, port = LISTEN.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
server.serve_forever()
