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
  block the body of a short function (2 to 10 lines; a Python docstring stays in the prompt): the
        cursor sits after the first body line's indentation and the whole body is expected
        (RepoEval's function tasks, cut to what one completion shows). Scored on all its lines.

Each task line is `{"id", "kind", "path", "prefix", "suffix", "expected"}`; prefix + expected +
suffix is the file (up to the expected text's trailing spaces). The expected text never occurs in
the prompt's prefix or suffix: it is cut out of them, and a line (a body) whose expected part
occurs elsewhere in its file is not a task (it would be copied, not predicted). Retrieval may still find
the same line in another file, which is what retrieval is for.

Usage: scripts/make_eval_tasks.py REPO OUT.jsonl [--kind api|line|rest|block] [--count 40] [--seed 0]
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


# A function's opening line: a definition ending its line with `{` (`:` in Python).
BLOCK_OPENER = {
    "rs": re.compile(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?(?:const\s+|async\s+|unsafe\s+)*fn\s+\w.*\{\s*$"),
    "go": re.compile(r"^func\b.*\{\s*$"),
    "py": re.compile(r"^\s*(?:async\s+)?def\s+\w+\s*\(.*\).*:\s*$"),
    "ts": re.compile(r"^\s*(?:export\s+)?(?:async\s+)?function\b.*\{\s*$"
                     r"|^\s+(?:(?:public|private|protected|static|async)\s+)*\w+\s*\(.*\)(?:\s*:\s*[^={]+)?\s*\{\s*$"),
    "js": re.compile(r"^\s*(?:export\s+)?(?:async\s+)?function\b.*\{\s*$"),
    "java": re.compile(r"^\s+(?:(?:public|private|protected|static|final|synchronized)\s+)+[\w<>\[\], ]+\s+\w+\s*\(.*\)[^;{]*\{\s*$"),
}
# Non-blank body lines of a block task, its lines at most (blank ones too: one completion shows at
# most `completion.max_lines`, 12), and its characters at most (and at most
# `completion.max_tokens_multiline`, 128 tokens).
MIN_BODY, MAX_BODY, MAX_SPAN, MAX_BODY_CHARS = 2, 10, 12, 400
# A TypeScript method opener must not be a statement: `if (…) {`.
STATEMENTS = {"if", "for", "while", "switch", "catch", "return", "else", "function"}
DOCSTRING = ('"""', "'''")
# A block's closing line.
CLOSERS = {"}", "};", "},"}


def balanced(text: str) -> bool:
    """Whether `text` closes every bracket it opens and every multi-line string: a body cut inside
    a string (a raw JSON literal in a Go test, an SQL string in Python) is not a block."""
    if any(text.count(q) % 2 for q in (*DOCSTRING, "`")):
        return False
    depth = {"(": 0, "[": 0, "{": 0}
    pairs = {")": "(", "]": "[", "}": "{"}
    for c in text:
        if c in depth:
            depth[c] += 1
        elif c in pairs:
            depth[pairs[c]] -= 1
            if depth[pairs[c]] < 0:
                return False
    return not any(depth.values())


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def python_body(lines: list[tuple[int, str]], i: int) -> list[int]:
    """Indices of the body lines of the `def` on line i, its docstring left out."""
    indent, body, j = indent_of(lines[i][1]), [], i + 1
    while j < len(lines) and (not lines[j][1].strip() or indent_of(lines[j][1]) > indent):
        body.append(j)
        j += 1
    while body and not lines[body[-1]][1].strip():
        body.pop()
    if body:
        first = lines[body[0]][1].strip().lstrip("rbuRBU")
        quote = first[:3]
        if quote in DOCSTRING:
            # The docstring ends on the line holding its closing quotes.
            k = 0 if first.count(quote) >= 2 else next((k for k in range(1, len(body)) if quote in lines[body[k]][1]), len(body))
            body = body[k + 1 :]
        elif re.fullmatch(r"(\"[^\"]*\"|'[^']*')", first):
            # A docstring in single quotes.
            body = body[1:]
    return body


def braced_body(lines: list[tuple[int, str]], i: int) -> list[int]:
    """Indices of the lines between the opener on line i and its `}` at the same indentation
    (none when a line at that indentation or less comes first)."""
    indent, body, j = indent_of(lines[i][1]), [], i + 1
    while j < len(lines):
        line = lines[j][1]
        if line.strip() and indent_of(line) <= indent:
            return body if indent_of(line) == indent and line.strip() in CLOSERS else []
        body.append(j)
        j += 1
    return []


def block_bodies(files: dict[str, str], per_file: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """(path, cursor, end) of short function bodies: the cursor after the first body line's
    indentation, `end` the end of the last body line. At most `per_file` per file, at random."""
    found = []
    for path, text in files.items():
        ext = path.rsplit(".", 1)[-1]
        opener = BLOCK_OPENER.get(ext)
        if opener is None:
            continue
        lines = list(lines_of(text))
        here = []
        for i, (_, line) in enumerate(lines):
            head = line.strip().split("(")[0].split()
            if len(line) > MAX_LINE or not opener.match(line) or (head and head[-1] in STATEMENTS and head[0] != "function"):
                continue
            # A `def` inside a string (a docstring's example) is not code.
            if ext == "py" and any(text[: lines[i][0]].count(q) % 2 for q in DOCSTRING):
                continue
            body = python_body(lines, i) if ext == "py" else braced_body(lines, i)
            code = [k for k in body if lines[k][1].strip()]
            if not MIN_BODY <= len(code) <= MAX_BODY or code[-1] - code[0] >= MAX_SPAN or any(len(lines[k][1]) > MAX_LINE for k in body) or skipped(lines[code[0]][1]):
                continue
            first_start, first_line = lines[code[0]]
            last_start, last_line = lines[code[-1]]
            cursor, end = first_start + indent_of(first_line), last_start + len(last_line.rstrip())
            expected = text[cursor:end]
            if len(expected) > MAX_BODY_CHARS or not balanced(expected) or expected in text[:cursor] or expected in text[end:]:
                continue
            here.append((path, cursor, end))
        rng.shuffle(here)
        found.extend(here[:per_file])
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo")
    ap.add_argument("out")
    ap.add_argument("--kind", choices=["api", "line", "rest", "block"], default="api")
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ext", default="rs,py,go,js,ts,java")
    ap.add_argument("--per-file", type=int, default=1, help="tasks per file at most")
    args = ap.parse_args()
    exts = {e.strip().lstrip(".") for e in args.ext.split(",") if e.strip()}

    files = read_files(args.repo, exts)
    rng = random.Random(args.seed)
    # (path, cursor), or (path, cursor, end) when the expected text ends before the line's end.
    if args.kind == "rest":
        candidates = rest_of_line_cuts(files, args.per_file, random.Random(args.seed + 1))
    elif args.kind == "block":
        candidates = block_bodies(files, args.per_file, random.Random(args.seed + 1))
    else:
        candidates = cross_file_calls(files, args.per_file, args.kind)
    ends = {(c[0], c[1]): c[2] for c in candidates if len(c) == 3}
    candidates = [(c[0], c[1]) for c in candidates]

    chosen = sorted(rng.sample(candidates, min(args.count, len(candidates))))
    with open(args.out, "w", encoding="utf-8") as out:
        for path, cursor in chosen:
            text = files[path]
            line_start = text.rfind("\n", 0, cursor) + 1
            line_end = text.find("\n", cursor)
            line_end = ends.get((path, cursor), len(text) if line_end < 0 else line_end)
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
