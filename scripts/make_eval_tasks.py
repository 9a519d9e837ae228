#!/usr/bin/env python3
"""Builds completion tasks for `kenning eval` from any repository.

A task is a line that calls something defined in *another* file of the repository and not named
earlier in its own file: the cursor sits just before that name, and the expected text is the rest of
the line. Without context from the other file a model has to guess the name and its arguments; with
retrieval it can read them. Imports, module declarations and attributes are never tasks. Each task
line is `{"id", "path", "prefix", "suffix", "expected"}`; prefix + expected + suffix is the file (up
to the expected line's trailing spaces).

Usage: scripts/make_eval_tasks.py REPO OUT.jsonl [--count 40] [--seed 0] [--ext rs,py,...]
Deterministic for a given repository, count and seed.
"""

import argparse
import json
import os
import random
import re
import sys

DEFINITION = {
    "rs": r"\b(?:fn|struct|enum|trait|type|const|static|union|macro_rules!)\s+([A-Za-z_][A-Za-z0-9_]*)",
    "py": r"^\s*(?:async\s+def|def|class)\s+([A-Za-z_][A-Za-z0-9_]*)",
    "go": r"^(?:func(?:\s*\([^)]*\))?|type)\s+([A-Za-z_][A-Za-z0-9_]*)",
    "js": r"\b(?:function|class)\s+([A-Za-z_$][A-Za-z0-9_$]*)",
    "ts": r"\b(?:function|class|interface|type|enum)\s+([A-Za-z_$][A-Za-z0-9_$]*)",
    "java": r"\b(?:class|interface|enum|record)\s+([A-Za-z_][A-Za-z0-9_]*)",
}
SKIP_DIRS = {".git", "target", "node_modules", "vendor", "build", "dist", "__pycache__"}
# Shortest name worth a task, longest line, files defining a name at most.
MIN_NAME, MAX_LINE, MAX_DEFINERS = 6, 160, 3


def skipped(line: str) -> bool:
    """Comments, imports, module declarations, attributes."""
    s = line.strip()
    return s.startswith(
        ("//", "#", "*", "/*", "--", "use ", "pub use ", "pub(crate) use ", "mod ", "pub mod ", "pub(crate) mod ",
         "import ", "from ", "package ", "extern crate", "require(")
    )


# A call or a path into the name: `name(`, `name::<`, `Name::method(`, `name!(`.
CALL = re.compile(r"\s*(\(|!\(|::<|::[A-Za-z_][A-Za-z0-9_]*\s*\()")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ext", default="rs,py,go,js,ts,java")
    args = ap.parse_args()
    exts = {e.strip().lstrip(".") for e in args.ext.split(",") if e.strip()}

    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(args.repo):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            ext = name.rsplit(".", 1)[-1]
            if ext not in exts or ext not in DEFINITION:
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) > 1_000_000:
                continue
            files[os.path.relpath(path, args.repo).replace(os.sep, "/")] = text

    definers: dict[str, set[str]] = {}
    for path, text in files.items():
        pattern = re.compile(DEFINITION[path.rsplit(".", 1)[-1]], re.M)
        for m in pattern.finditer(text):
            definers.setdefault(m.group(1), set()).add(path)

    candidates: list[tuple[str, int, int]] = []  # (path, line start offset, cursor offset)
    for path, text in files.items():
        offset = 0
        seen_in_file = False
        for line in text.split("\n"):
            start = offset
            offset += len(line) + 1
            if seen_in_file or len(line) > MAX_LINE or skipped(line):
                continue
            for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", line):
                name = m.group(0)
                where = definers.get(name)
                if not where or path in where or len(where) > MAX_DEFINERS or len(name) < MIN_NAME:
                    continue
                if name in files[path][: start] and name not in line[: m.start()]:
                    # Named earlier in the file (an import): the prefix already gives it away.
                    continue
                if not CALL.match(line, m.end()):
                    continue
                expected = line[m.start():].rstrip()
                if len(expected.strip()) < 8 or not line[: m.start()].strip():
                    continue
                candidates.append((path, start, start + m.start()))
                seen_in_file = True  # one task per file keeps the set varied
                break

    rng = random.Random(args.seed)
    chosen = sorted(rng.sample(candidates, min(args.count, len(candidates))))
    with open(args.out, "w", encoding="utf-8") as out:
        for path, line_start, cursor in chosen:
            text = files[path]
            line_end = text.find("\n", cursor)
            line_end = len(text) if line_end < 0 else line_end
            task = {
                "id": f"{path}:{text.count(chr(10), 0, line_start) + 1}",
                "path": path,
                "prefix": text[:cursor],
                "suffix": text[line_end:],
                "expected": text[cursor:line_end].rstrip(),
            }
            out.write(json.dumps(task) + "\n")
    print(f"{len(chosen)} tasks from {len(candidates)} candidates in {len(files)} files -> {args.out}", file=sys.stderr)
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
