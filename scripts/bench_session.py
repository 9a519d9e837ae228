#!/usr/bin/env python3
"""Replays editing sessions through `kenning serve` on stdio, as an editor would, and measures what a
user sees: time from keystroke to ghost text.

A session opens a real file of the corpus with one function body removed, then types the body back
in bursts (a word, or a line break with the next line's indentation): a burst takes --char-ms per
character to type (a `didChange` per character, as an editor sends them), then the editor asks
`textDocument/inlineCompletion` (automatic trigger). The simulated user waits for the answer (up
to --timeout), reads it for --think-ms, accepts it with Tab when its first line is exactly the
rest of the line (the client inserts it and goes on at the next line), and otherwise types on.

Each configuration given with --config NAME:JSON runs every session against a fresh server with
those `initializationOptions`; all are printed side by side: time to ghost text p50/p90/p99, share
under 1 s, the first completion after opening a file, requests answered, lines accepted, characters
saved / typed, characters predicted right (per line, the longest start of a suggestion that is
the start of the rest of the line, over the characters of the lines: what accepting word by word
would have given), prompt tokens computed per request (from the server's log), and the floor: the
median time spent decoding alone.

Usage: bench_session.py KENNING CORPUS [--sessions 6] [--seed 0] [--timeout 20]
                        --config NAME:JSON [--config NAME:JSON ...]
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time

# Functions whose bodies are typed back: lines of body, at least and at most.
MIN_BODY, MAX_BODY = 3, 12
FN = re.compile(r"^(\s*)(pub(\([a-z]+\))?\s+)?(async\s+)?(unsafe\s+)?fn\s+\w+[^;]*\{\s*$")


class Server:
    """`kenning serve` on stdio: framed JSON-RPC, a reader thread, requests answered by id."""

    def __init__(self, kenning: str, root: str, options: dict, log_path: str):
        env = dict(os.environ, KENNING_LOG="kenning=info,kenning::complete=debug")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([kenning, "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.next_id = 0
        self.replies: dict[int, dict] = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        uri = "file://" + root
        self.request("initialize", {
            "processId": os.getpid(),
            "rootUri": uri,
            "workspaceFolders": [{"uri": uri, "name": os.path.basename(root)}],
            "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}},
            "initializationOptions": options,
        }, timeout=120)
        self.notify("initialized", {})

    def _read(self):
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.decode().strip()
                if not line:
                    break
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            body = json.loads(out.read(int(headers["content-length"])))
            if "id" in body and "method" in body:
                # A request from the server (progress, configuration): answer it.
                self._send({"jsonrpc": "2.0", "id": body["id"], "result": None})
            elif "id" in body:
                with self.cv:
                    self.replies[body["id"]] = body
                    self.cv.notify_all()

    def _send(self, msg: dict):
        data = json.dumps(msg).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def send_request(self, method: str, params: dict) -> int:
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def wait(self, rid: int, timeout: float):
        deadline = time.monotonic() + timeout
        with self.cv:
            while rid not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            return self.replies.pop(rid)

    def request(self, method: str, params: dict, timeout: float = 60):
        reply = self.wait(self.send_request(method, params), timeout)
        if reply is None:
            raise TimeoutError(method)
        return reply.get("result")

    def close(self):
        try:
            self.request("shutdown", {}, timeout=10)
            self.notify("exit", {})
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        self.log.close()


def sessions(corpus: str, count: int, seed: int):
    """(path, text without the body, body start offset, body lines) for `count` functions."""
    found = []
    for dirpath, dirnames, filenames in os.walk(corpus):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("target", "tests", "benches", "examples"))
        for name in sorted(filenames):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            try:
                lines = open(path, encoding="utf-8").read().split("\n")
            except (UnicodeDecodeError, OSError):
                continue
            for i, line in enumerate(lines):
                m = FN.match(line)
                if not m:
                    continue
                indent = m.group(1)
                end = next((j for j in range(i + 1, min(len(lines), i + MAX_BODY + 2)) if lines[j] == indent + "}"), None)
                if end is None or not MIN_BODY <= end - i - 1 <= MAX_BODY:
                    continue
                body = lines[i + 1:end]
                if any(l.strip().startswith("//") for l in body) or sum(len(l) for l in body) < 60:
                    continue
                found.append((path, lines, i, end))
    rng = random.Random(seed)
    rng.shuffle(found)
    # At most one function per file: sessions in different files.
    chosen, files = [], set()
    for f in found:
        if f[0] not in files:
            files.add(f[0])
            chosen.append(f)
        if len(chosen) == count:
            break
    return chosen


def bursts(line: str):
    """A line typed as bursts: its indentation with the first word, then each further word."""
    return re.findall(r"\s*\S+", line) or [line]


def run_session(server: Server, path: str, lines, start: int, end: int, timeout: float, results: dict, char_s: float, think_s: float):
    uri = "file://" + path
    body = lines[start + 1:end]
    head = "\n".join(lines[:start + 1]) + "\n"
    tail = "\n".join(lines[end:])
    typed_lines: list[str] = []
    current = ""
    version = 1
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "rust", "version": version, "text": head + "\n" + tail}})
    first = True

    def text_now():
        return head + "".join(l + "\n" for l in typed_lines) + current + "\n" + tail

    for expected in body:
        pieces = bursts(expected)
        current = ""
        k = 0
        best_right = 0  # the most characters of this line any suggestion got right
        while len(current) < len(expected):
            for ch in pieces[k]:
                current += ch
                version += 1
                server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version}, "contentChanges": [{"text": text_now()}]})
                time.sleep(char_s)
            k += 1
            results["typed"] += len(pieces[k - 1])
            line_no = start + 1 + len(typed_lines)
            sent = time.monotonic()
            rid = server.send_request("textDocument/inlineCompletion", {
                "textDocument": {"uri": uri},
                "position": {"line": line_no, "character": len(current.encode())},
                "context": {"triggerKind": 2},
            })
            reply = server.wait(rid, timeout)
            elapsed = time.monotonic() - sent
            results["requests"] += 1
            if first:
                results["first"].append(elapsed if reply is not None else float("inf"))
                first = False
            if reply is None:
                results["unanswered"] += 1
                server.notify("$/cancelRequest", {"id": rid})
                results["latency"].append(float("inf"))
                continue
            items = reply.get("result") or []
            if isinstance(items, dict):
                items = items.get("items", [])
            results["latency"].append(elapsed)
            if not items:
                results["empty"] += 1
                continue
            suggestion = items[0]["insertText"]
            if isinstance(suggestion, dict):
                suggestion = suggestion.get("value", "")
            time.sleep(think_s)
            rest = expected[len(current):]
            first_line = suggestion.split("\n")[0]
            right = len(os.path.commonprefix([first_line, rest]))
            best_right = max(best_right, right)
            if results.get("trace") is not None:
                results["trace"].write(json.dumps({"typed": current, "rest": rest, "suggestion": suggestion, "s": round(elapsed, 3)}) + "\n")
            if rest and suggestion.split("\n")[0] == rest:
                # Tab: the rest of the line is inserted.
                results["accepted"] += 1
                results["saved"] += len(rest)
                current = expected
        results["right"] += best_right
        results["line_chars"] += len(expected.strip())
        typed_lines.append(expected)
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def server_log_figures(log_path: str):
    """Prompt tokens computed and decode time per fresh generation, from the server's log."""
    computed, decode = [], []
    for line in open(log_path, errors="replace"):
        if "generation finished" not in line:
            continue
        m = re.search(r"computed=(\d+)", line)
        if m:
            computed.append(int(m.group(1)))
        m = re.search(r"decode_ms=([\d.]+)", line)
        if m:
            decode.append(float(m.group(1)))
    return computed, decode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kenning")
    ap.add_argument("corpus")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--char-ms", type=float, default=60.0, help="time to type one character")
    ap.add_argument("--think-ms", type=float, default=250.0, help="time to read a suggestion")
    ap.add_argument("--config", action="append", required=True, help="NAME:JSON initializationOptions")
    ap.add_argument("--log-dir", default=None)
    args = ap.parse_args()
    corpus = os.path.realpath(args.corpus)
    chosen = sessions(corpus, args.sessions, args.seed)
    log_dir = args.log_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "kenning-bench-session")
    os.makedirs(log_dir, exist_ok=True)
    print(f"{len(chosen)} sessions: " + ", ".join(f"{os.path.relpath(p, corpus)}:{s + 1}" for p, _, s, _ in chosen), flush=True)
    print(f"typing {args.char_ms:.0f} ms per character, reading a suggestion {args.think_ms:.0f} ms, time-out {args.timeout:.0f} s", flush=True)

    table = []
    for spec in args.config:
        name, _, options = spec.partition(":")
        options = json.loads(options) if options else {}
        log_path = os.path.join(log_dir, f"{name}.log")
        results = {"typed": 0, "saved": 0, "accepted": 0, "right": 0, "line_chars": 0, "requests": 0, "unanswered": 0, "empty": 0, "latency": [], "first": [],
                   "trace": open(os.path.join(log_dir, f"{name}.trace.jsonl"), "w")}
        started = time.monotonic()
        server = Server(args.kenning, corpus, options, log_path)
        # Let the start-up index check finish (the corpus is indexed already).
        for _ in range(600):
            status = server.request("workspace/executeCommand", {"command": "kenning.status", "arguments": []})
            if not any(r.get("indexing") for r in (status or {}).get("roots", [])):
                break
            time.sleep(0.5)
        for path, lines, s, e in chosen:
            run_session(server, path, lines, s, e, args.timeout, results, args.char_ms / 1e3, args.think_ms / 1e3)
        server.close()
        computed, decode = server_log_figures(log_path)
        lat = results["latency"]
        row = {
            "config": name,
            "requests": results["requests"],
            "answered": results["requests"] - results["unanswered"],
            "p50_s": pct(lat, 50), "p90_s": pct(lat, 90), "p99_s": pct(lat, 99),
            "under_1s": sum(1 for x in lat if x < 1.0) / max(1, len(lat)),
            "first_after_open_s": statistics.median(results["first"]) if results["first"] else float("nan"),
            "lines_accepted": results["accepted"],
            "saved_over_typed": results["saved"] / max(1, results["typed"] + results["saved"]),
            "right_over_chars": results["right"] / max(1, results["line_chars"]),
            "computed_tokens_p50": pct(computed, 50), "computed_tokens_mean": statistics.mean(computed) if computed else float("nan"),
            "decode_floor_s": pct(decode, 50) / 1e3 if decode else float("nan"),
            "wall_s": time.monotonic() - started,
        }
        table.append(row)
        print(json.dumps(row), flush=True)

    print()
    print("| | " + " | ".join(r["config"] for r in table) + " |")
    print("|---|" + "---|" * len(table))
    fmt = [
        ("time to ghost text p50 / p90 / p99", lambda r: f"{r['p50_s']:.2f} / {r['p90_s']:.2f} / {r['p99_s']:.2f} s"),
        ("share under 1 s", lambda r: f"{100 * r['under_1s']:.0f} %"),
        ("first completion after opening a file (median)", lambda r: f"{r['first_after_open_s']:.2f} s"),
        ("requests answered", lambda r: f"{r['answered']} / {r['requests']}"),
        ("lines accepted", lambda r: f"{r['lines_accepted']}"),
        ("characters saved / all characters", lambda r: f"{100 * r['saved_over_typed']:.1f} %"),
        ("characters predicted right (best per line) / all", lambda r: f"{100 * r['right_over_chars']:.1f} %"),
        ("prompt tokens computed per generation (p50 / mean)", lambda r: f"{r['computed_tokens_p50']} / {r['computed_tokens_mean']:.0f}"),
        ("floor: decoding alone (p50)", lambda r: f"{r['decode_floor_s']:.2f} s"),
        ("wall time", lambda r: f"{r['wall_s']:.0f} s"),
    ]
    for label, f in fmt:
        print(f"| {label} | " + " | ".join(f(r) for r in table) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
