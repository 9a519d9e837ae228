#!/usr/bin/env python3
"""A Hugging Face hub on loopback, for tests: model files in the hub's URL layout and headers.

    GET/HEAD /{owner}/{repo}/resolve/{revision}/{file}
        302 to /lfs/{sha256}, with X-Repo-Commit, X-Linked-Etag ("sha256") and X-Linked-Size,
        as the hub answers for an LFS file; revision is `main` or the repository's commit.
    GET /lfs/{sha256}
        the bytes, honouring `Range: bytes=N-` (206 with Content-Range).

Files are served from ROOT/{owner}/{repo}/{file}. Faults, for the tests:
    --cut-after N     the first transfer of each file sends N bytes and closes the connection
    --corrupt         one byte of every transfer differs from the file (the hash no longer matches)
    --token T         /resolve/ answers 401 without `Authorization: Bearer T`
    --slow-ms N       a pause of N ms after every MB sent (a download that takes a while)
    --no-range        /lfs/ ignores Range and always sends the whole file (200)
    --lfs-host H      the redirect names the storage as http://H:PORT/lfs/... (another host name)
Every request is appended to --log as `METHOD PATH RANGE auth=yes|no` (RANGE `-` when absent).
The chosen port is written to --port-file once the server listens.
"""

import argparse
import hashlib
import http.server
import os
import threading
import time

COMMIT = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cut-after", type=int, default=0)
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--token", default="")
    parser.add_argument("--slow-ms", type=int, default=0)
    parser.add_argument("--no-range", action="store_true")
    parser.add_argument("--lfs-host", default="")
    args = parser.parse_args()

    lock = threading.Lock()
    by_sha = {}  # sha256 -> path
    sha_of = {}  # path -> sha256
    cut_done = set()

    def sha256(path):
        with lock:
            if path not in sha_of:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                sha_of[path] = digest.hexdigest()
                by_sha[sha_of[path]] = path
            return sha_of[path]

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def record(self):
            with lock, open(args.log, "a") as log:
                auth = "yes" if self.headers.get("Authorization") else "no"
                log.write(f"{self.command} {self.path} {self.headers.get('Range', '-')} auth={auth}\n")

        def plain(self, status, text=""):
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def resolve(self):
            parts = self.path.split("?")[0].lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self.plain(404, "Entry not found")
            if args.token and self.headers.get("Authorization") != f"Bearer {args.token}":
                return self.plain(401, "Invalid credentials")
            owner, repo, _, revision = parts[:4]
            path = os.path.join(args.root, owner, repo, *parts[4:])
            if revision not in ("main", COMMIT) or not os.path.isfile(path):
                return self.plain(404, "Entry not found")
            sha = sha256(path)
            self.send_response(302)
            if args.lfs_host:
                self.send_header("Location", f"http://{args.lfs_host}:{self.server.server_address[1]}/lfs/{sha}")
            else:
                self.send_header("Location", f"/lfs/{sha}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(os.path.getsize(path)))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

        def lfs(self):
            sha = self.path.split("/")[-1]
            path = by_sha.get(sha)
            if path is None:
                return self.plain(404, "no such object")
            size = os.path.getsize(path)
            start = 0
            ranged = "" if args.no_range else self.headers.get("Range", "")
            if ranged.startswith("bytes=") and ranged.endswith("-"):
                start = int(ranged[len("bytes="):-1])
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    return self.end_headers()
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(size - start))
            if ranged:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            limit = size - start
            with lock:
                if args.cut_after and path not in cut_done:
                    cut_done.add(path)
                    limit = min(limit, args.cut_after)
            with open(path, "rb") as f:
                f.seek(start)
                sent = 0
                while sent < limit:
                    block = bytearray(f.read(min(1 << 20, limit - sent)))
                    if not block:
                        break
                    if args.corrupt and sent == 0:
                        block[0] ^= 0xFF
                    self.wfile.write(block)
                    sent += len(block)
                    if args.slow_ms:
                        time.sleep(args.slow_ms / 1000)
            self.wfile.flush()
            self.close_connection = True

        def route(self):
            self.record()
            if self.path.startswith("/lfs/"):
                self.lfs()
            else:
                self.resolve()

        do_GET = route
        do_HEAD = route

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".partial", "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(args.port_file + ".partial", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
