#!/usr/bin/env python3
"""Builds completion tasks for `kenning eval` from any repository.

Three kinds of task, each a cut in a real line of code (never a comment, an import, a module
declaration or an attribute); the expected text is the rest of that line:

  api   a line calling something defined in *another* file of the repository and not named earlier
        in its own file: the cursor sits just before that name. Without context from the other file
        a model has to guess the name and its arguments (CrossCodeEval's API tasks).
  line  a line calling something defined in another file: the cursor sits after the line's
        indentation and the whole line is expected (RepoEval's line tasks: the model must also
        guess *that* the line calls it).
  rest  any code line of 24 characters or more, cut at a word boundary in its middle (what a user
        sees most often while typing; context matters less).

Each task line is `{"id", "kind", "path", "prefix", "suffix", "expected"}`; prefix + expected +
suffix is the file (up to the expected line's trailing spaces). The expected text never occurs in
the prompt's prefix or suffix: it is cut out of them, and a line whose expected part occurs
elsewhere in its file is not a task (it would be copied, not predicted). Retrieval may still find
the same line in another file, which is what retrieval is for.

Usage: scripts/make_eval_tasks.py REPO OUT.jsonl [--kind api|line|rest] [--count 40] [--seed 0]
                                  [--ext rs,py,...] [--per-file 1]
Deterministic for a given repository, kind, count, seed and per-file cap.
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
# A rest-of-line task's line is at least this long; its cut leaves at least this much on each side.
MIN_REST_LINE, MIN_REST_SIDE = 24, 6


def skipped(line: str) -> bool:
    """Comments, imports, module declarations, attributes, decorators, blank lines."""
    s = line.strip()
    return not s or s.startswith(
        ("//", "#", "*", "/*", "--", "@", '"""', "'''", "use ", "pub use ", "pub(crate) use ", "mod ", "pub mod ",
         "pub(crate) mod ", "import ", "from ", "package ", "extern crate", "require(", "export * from")
    )


# A call or a path into the name: `name(`, `name::<`, `Name::method(`, `name!(`; line tasks also
# take `Name.method(` (Python, TypeScript, Go).
CALL = re.compile(r"\s*(\(|!\(|::<|::[A-Za-z_][A-Za-z0-9_]*\s*\()")
CALL_OR_METHOD = re.compile(r"\s*(\(|!\(|::<|::[A-Za-z_][A-Za-z0-9_]*\s*\(|\.[A-Za-z_][A-Za-z0-9_]*\s*\()")


def read_files(repo: str, exts: set[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            ext = name.rsplit(".", 1)[-1]
            if ext not in exts or ext not in DEFINITION or name.endswith(".d.ts"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) > 1_000_000:
                continue
            files[os.path.relpath(path, repo).replace(os.sep, "/")] = text
    return files


def lines_of(text: str):
    """(line start offset, line) for each line."""
    offset = 0
    for line in text.split("\n"):
        yield offset, line
        offset += len(line) + 1


def leaks(text: str, cursor: int) -> bool:
    """Whether the rest of the cursor's line (what the task expects) also occurs in the prompt's
    prefix or suffix: a repeated line would be copied, not predicted."""
    line_end = text.find("\n", cursor)
    line_end = len(text) if line_end < 0 else line_end
    expected = text[cursor:line_end].strip()
    return not expected or expected in text[:cursor] or expected in text[line_end:]


def cross_file_calls(files: dict[str, str], per_file: int, kind: str) -> list[tuple[str, int]]:
    """(path, cursor) of lines calling a name defined in another file."""
    definers: dict[str, set[str]] = {}
    for path, text in files.items():
        pattern = re.compile(DEFINITION[path.rsplit(".", 1)[-1]], re.M)
        for m in pattern.finditer(text):
            definers.setdefault(m.group(1), set()).add(path)
    found = []
    for path, text in files.items():
        in_file = 0
        for start, line in lines_of(text):
            if in_file >= per_file or len(line) > MAX_LINE or skipped(line):
                continue
            for m in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", line):
                name = m.group(0)
                where = definers.get(name)
                if not where or path in where or len(where) > MAX_DEFINERS or len(name) < MIN_NAME:
                    continue
                if kind == "api" and name in text[:start] and name not in line[: m.start()]:
                    # Named earlier in the file (an import): the prefix already gives it away.
                    continue
                if not (CALL if kind == "api" else CALL_OR_METHOD).match(line, m.end()):
                    continue
                indent = len(line) - len(line.lstrip())
                cursor = m.start() if kind == "api" else indent
                if len(line[cursor:].strip()) < 8 or (kind == "api" and not line[: m.start()].strip()) or leaks(text, start + cursor):
                    continue
                found.append((path, start + cursor))
                in_file += 1
                break
    return found


def rest_of_line_cuts(files: dict[str, str], per_file: int, rng: random.Random) -> list[tuple[str, int]]:
    """(path, cursor) of cuts inside code lines, at word boundaries: lines taken in a random order,
    each cut at one random boundary, until `per_file` cuts do not leak."""
    found = []
    for path, text in files.items():
        here = []
        for start, line in lines_of(text):
            body = line.strip()
            if len(body) < MIN_REST_LINE or len(line) > MAX_LINE or skipped(line):
                continue
            indent = len(line) - len(line.lstrip())
            cuts = [m.start() for m in re.finditer(r"\b", line) if indent + MIN_REST_SIDE <= m.start() <= len(line.rstrip()) - MIN_REST_SIDE]
            if cuts:
                here.append(start + rng.choice(cuts))
        rng.shuffle(here)
        taken = []
        # One by one: each check reads the whole file.
        for cursor in here:
            if len(taken) == per_file:
                break
            if not leaks(text, cursor):
                taken.append(cursor)
        found.extend((path, cursor) for cursor in taken)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("out")
    ap.add_argument("--kind", choices=["api", "line", "rest"], default="api")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ext", default="rs,py,go,js,ts,java")
    ap.add_argument("--per-file", type=int, default=1, help="tasks per file at most")
    args = ap.parse_args()
    exts = {e.strip().lstrip(".") for e in args.ext.split(",") if e.strip()}

    files = read_files(args.repo, exts)
    rng = random.Random(args.seed)
    if args.kind == "rest":
        candidates = rest_of_line_cuts(files, args.per_file, random.Random(args.seed + 1))
    else:
        candidates = cross_file_calls(files, args.per_file, args.kind)

    chosen = sorted(rng.sample(candidates, min(args.count, len(candidates))))
    with open(args.out, "w", encoding="utf-8") as out:
        for path, cursor in chosen:
            text = files[path]
            line_start = text.rfind("\n", 0, cursor) + 1
            line_end = text.find("\n", cursor)
            line_end = len(text) if line_end < 0 else line_end
            task = {
                "id": f"{path}:{text.count(chr(10), 0, line_start) + 1}",
                "kind": args.kind,
                "path": path,
                "prefix": text[:cursor],
                "suffix": text[line_end:],
                "expected": text[cursor:line_end].rstrip(),
            }
            out.write(json.dumps(task) + "\n")
    print(f"{len(chosen)} {args.kind} tasks from {len(candidates)} candidates in {len(files)} files -> {args.out}", file=sys.stderr)
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
