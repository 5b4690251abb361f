#!/usr/bin/env python3
"""A stand-in control plane for the PXE prototype (scripts/pxe-proto/run.sh).

Listens on 127.0.0.1 only and serves, from the directory ROOT:

  GET  /boot/<mac>.ipxe  the iPXE script for that MAC: ROOT/<state>.ipxe where <state> is
                         the content of ROOT/state ("rescue" or "disk"); "@TOKEN@" etc. are
                         not templated: run.sh writes complete scripts
  GET  /files/<name>     ROOT/files/<name> (kernel, initramfs, disk images)
  GET  /job/<server>     ROOT/job.json, when the Authorization header is "Bearer " + ROOT/token
  POST /done/<server>    same check; writes "disk" to ROOT/state
Every request is appended to ROOT/requests.log (never the token).

Usage: cp.py ROOT PORTFILE   (binds an ephemeral port, writes it to PORTFILE)
"""
import http.server
import os
import socketserver
import sys
import time

ROOT = sys.argv[1]


def rd(name, default=""):
    try:
        with open(os.path.join(ROOT, name)) as f:
            return f.read().strip()
    except OSError:
        return default


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        with open(os.path.join(ROOT, "requests.log"), "a") as f:
            f.write("%.3f %s\n" % (time.time(), fmt % args))

    def send(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def authorized(self):
        return self.headers.get("Authorization", "") == "Bearer " + rd("token")

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        p = self.path.split("?", 1)[0]
        if p.startswith("/boot/") and p.endswith(".ipxe"):
            state = rd("state", "rescue")
            body = rd(state + ".ipxe").encode() + b"\n"
            with open(os.path.join(ROOT, "requests.log"), "a") as f:
                f.write("%.3f boot script for %s: state %s\n" % (time.time(), p[6:-5], state))
            return self.send(200, body)
        if p.startswith("/files/"):
            name = os.path.basename(p)
            path = os.path.join(ROOT, "files", name)
            if not os.path.isfile(path):
                return self.send(404, b"not found\n")
            size = os.path.getsize(path)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            with open(path, "rb") as f:
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    self.wfile.write(b)
            return
        if p.startswith("/job/"):
            if not self.authorized():
                return self.send(401, b"bad token\n")
            return self.send(200, rd("job.json", "{}").encode(), "application/json")
        self.send(404, b"not found\n")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        if n:
            self.rfile.read(n)
        if self.path.startswith("/done/"):
            if not self.authorized():
                return self.send(401, b"bad token\n")
            with open(os.path.join(ROOT, "state"), "w") as f:
                f.write("disk\n")
            return self.send(200, b"ok\n")
        self.send(404, b"not found\n")


class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = S(("127.0.0.1", 0), H)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
srv.serve_forever()
