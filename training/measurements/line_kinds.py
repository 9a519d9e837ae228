#!/usr/bin/env python3
"""Labels a time-split run's tasks by what their expected line is, so that `kenning compare`
breaks the run down by it (its `kind` groups): the evidence of where an adapter or retrieval helps.

A time-split task of a whole line (`kenning eval --split time --kinds line`, the first runs' only
kind) is one line added after the split, its id `PATH:LINE` at the run's end commit; runs of
several kinds (ids `PATH:LINE:KIND`) carry their kinds already and are not for this script. Kinds, the first that matches the line's code:
  signature  a definition or attribute line (fn, struct, impl, def, class, #[...], ...)
  control    if / else / match / for / while / loop / return / break / continue
  binding    let / const / var, or an assignment
  call       any other line with a call (`name(`, `name!(`)
  other      match arms, and the rest (struct fields, closing expressions, ...)

Usage: training/measurements/line_kinds.py REPO COMMIT OUT_DIR SCORES.json...
  e.g. (from the repository's root)
  training/measurements/line_kinds.py . db03b31adecf /tmp/kinds training/measurements/RUN/scores/*.json
  kenning compare --base /tmp/kinds/none-*.json --with /tmp/kinds/ft-*.json
Writes each score file again under OUT_DIR with its tasks' `kind` set; the input is not changed.
"""
import json
import os
import re
import subprocess
import sys

SIGNATURE = re.compile(r"(pub(\([a-z]+\))?\s+)?(async\s+|const\s+|unsafe\s+|export\s+)*(fn|struct|enum|impl|trait|type|mod|def|class|function|interface)\b")
CONTROL = re.compile(r"(if|else|match|for|while|loop|return|break|continue)\b|\}\s*else")
BINDING = re.compile(r"(let|const|var)\b|[A-Za-z_][\w.]*\s*[-+*/|&]?=(?![=>])")
# A match arm (`Some(x) => …`, `_ => {}`): "other", whatever its right-hand side is.
ARM = re.compile(r"[^=]*=>")
CALL = re.compile(r"[A-Za-z_]\w*!?\s*\(")


def kind(code: str) -> str:
    c = code.strip()
    if SIGNATURE.match(c) or c.startswith("#["):
        return "signature"
    if CONTROL.match(c):
        return "control"
    if ARM.match(c) and not c.startswith(("let ", "const ", "var ")):
        return "other"
    if BINDING.match(c):
        return "binding"
    if CALL.search(c):
        return "call"
    return "other"


def main() -> int:
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        return 2
    repo, commit, out, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    texts: dict[str, list[str]] = {}

    def line_of(path: str, n: int) -> str:
        if path not in texts:
            shown = subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], capture_output=True, text=True)
            if shown.returncode != 0:
                sys.exit(f"line_kinds: {path} is not in {commit} of {repo}: {shown.stderr.strip()}")
            texts[path] = shown.stdout.split("\n")
        return texts[path][n - 1]

    os.makedirs(out, exist_ok=True)
    for file in files:
        with open(file) as f:
            run = json.load(f)
        for score in run["scores"]:
            path, n = score["id"].rsplit(":", 1)
            score["kind"] = kind(line_of(path, int(n)))
        with open(os.path.join(out, os.path.basename(file)), "w") as f:
            json.dump(run, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
