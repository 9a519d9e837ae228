#!/usr/bin/env python3
"""Selective retrieval by the model's own confidence, simulated from two saved runs of the same
tasks: the model alone (`none`, saved by a build that records each task's first tokens'
log-probabilities) and with context (`rag`). The gate asks for context only where the model
alone was unsure: a task takes rag's completion when the mean log-probability of none's first
TOKENS generated tokens is below a threshold, and none's otherwise (a task where none wrote nothing
counts as unsure). In an editor that is one context-free generation's first tokens before
deciding, which the gate would have to pay for; this script only asks whether the signal is there.

The threshold is chosen on half of the files (the design half: a file's half follows from a hash
of its repository and path, so it is the same on every run) as the one of the design tasks'
confidence deciles, or "never" / "always", that gives the best mean edit similarity there; it is
then judged on the other half only (validation), which played no part in choosing it. Give
--threshold to judge a threshold chosen elsewhere on every task instead.

Writes OUT_DIR/{none,rag,gated}-{design,validation}-WORKSPACE.json (or -all- with --threshold), and
none's and rag's tasks by quartile of confidence (OUT_DIR/{none,rag}-qN-WORKSPACE.json), files that
`kenning compare` reads for the paired intervals (the commands are printed):
  kenning compare --base OUT_DIR/none-validation-*.json --with OUT_DIR/gated-validation-*.json
  kenning compare --base OUT_DIR/rag-validation-*.json --with OUT_DIR/gated-validation-*.json
It also prints how confidence goes with rag − none and with none's own edit similarity (Pearson
correlation over the tasks), for the mean of the first TOKENS, the first token alone, the lowest of
the first TOKENS and the mean of all recorded (16). The first token of a task cut inside a word is
often the one token healing chose to spell the typed part again: its probability is counted too.
The threshold's ties go to the larger one (context on more tasks).

Usage: training/measurements/gate_by_confidence.py --none NONE.json... --rag RAG.json... --out OUT_DIR
                                                   [--tokens N] [--threshold T]
"""
import argparse
import hashlib
import json
import math
import os
import statistics
import sys


def load(files):
    """(workspace, id) -> (score, file's header) for every task of the given score files."""
    tasks = {}
    for f in files:
        run = json.load(open(f))
        for s in run["scores"]:
            key = (run.get("workspace", ""), s["id"])
            if key in tasks:
                sys.exit(f"task {s['id']} of {key[0] or 'the workspace'} is twice in the runs given ({f})")
            tasks[key] = s
    return tasks


def confidence(score, tokens):
    p = score.get("logprobs") or []
    return statistics.fmean(p[:tokens]) if p else -math.inf


def design(key):
    return hashlib.sha256(f"{key[0]}/{key[1].split(':')[0]}".encode()).digest()[0] % 2 == 0


def write(path, mode, workspace_scores):
    """A `kenning eval --save-scores` file per workspace is what compare reads: one list of runs."""
    by_workspace = {}
    for (workspace, _), s in workspace_scores:
        by_workspace.setdefault(workspace, []).append(s)
    runs = []
    for workspace, scores in sorted(by_workspace.items()):
        n = len(scores)
        latencies = sorted(s["latency_ms"] for s in scores)
        runs.append({
            "mode": mode, "tasks": n,
            "exact_match": sum(s["exact"] for s in scores) / n,
            "edit_similarity": sum(s["similarity"] for s in scores) / n,
            "mean_latency_ms": sum(latencies) / n, "p50_latency_ms": latencies[n // 2],
            "peak_rss_mib": 0.0, "workspace": workspace, "scores": scores,
        })
    # compare reads one Figures per file: one file per workspace, named after it.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    written = []
    for run in runs:
        name = f"{path}-{run['workspace'] or 'workspace'}.json"
        json.dump(run, open(name, "w"))
        written.append(name)
    return written


def policy(keys, none, rag, conf, threshold):
    return [(k, rag[k] if conf[k] < threshold else none[k]) for k in keys]


def mean_similarity(pairs):
    return 100 * statistics.fmean(s["similarity"] for _, s in pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--none", nargs="+", required=True)
    parser.add_argument("--rag", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--threshold", type=float)
    args = parser.parse_args()
    none, rag = load(args.none), load(args.rag)
    keys = sorted(k for k in none if k in rag)
    if not keys:
        sys.exit("the two sides share no task")
    recorded = [k for k in keys if none[k].get("logprobs")]
    empty = [k for k in keys if not none[k].get("logprobs") and none[k]["similarity"] > 0]
    if len(keys) < 8:
        sys.exit(f"{len(keys)} tasks in both runs: too few to say anything")
    if not recorded:
        sys.exit("none's scores carry no log-probabilities: run none again with a build that records them")
    if empty:
        sys.exit(f"{len(empty)} of none's tasks have a completion but no log-probabilities (an older build?), e.g. {empty[0]}")
    conf = {k: confidence(none[k], args.tokens) for k in keys}
    print(f"{len(keys)} tasks in both runs; {len(keys) - len(recorded)} where none wrote nothing (unsure)")

    # Is the signal there at all: how confidence goes with context's gain and with none's quality.
    def correlation(xs, ys):
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        sx, sy = math.sqrt(sum((x - mx) ** 2 for x in xs)), math.sqrt(sum((y - my) ** 2 for y in ys))
        return sxy / (sx * sy) if sx and sy else float("nan")
    # Tasks where none wrote nothing have no confidence: left out of the correlations.
    signals = {f"mean of the first {args.tokens}": lambda p: statistics.fmean(p[:args.tokens]), "first token": lambda p: p[0],
               f"lowest of the first {args.tokens}": lambda p: min(p[:args.tokens]), "mean of all recorded": statistics.fmean}
    for name, signal in signals.items():
        xs = [signal(none[k]["logprobs"]) for k in recorded]
        gain = correlation(xs, [rag[k]["similarity"] - none[k]["similarity"] for k in recorded])
        quality = correlation(xs, [none[k]["similarity"] for k in recorded])
        print(f"  {name}: correlation with rag − none {gain:+.3f}, with none {quality:+.3f} ({len(recorded)} tasks)")

    # rag − none by confidence quartile, on every task.
    ordered = sorted(keys, key=lambda k: conf[k])
    q = len(ordered) // 4
    for i in range(4):
        part = ordered[i * q:(i + 1) * q if i < 3 else len(ordered)]
        gain = statistics.fmean(100 * (rag[k]["similarity"] - none[k]["similarity"]) for k in part)
        low, high = conf[part[0]], conf[part[-1]]
        print(f"  confidence quartile {i + 1} ({low:.2f} … {high:.2f}, {len(part)} tasks): rag − none {gain:+.1f}, none {statistics.fmean(100 * none[k]['similarity'] for k in part):.1f}")
        quartile = [write(os.path.join(args.out, f"{mode}-q{i + 1}"), mode, [(k, side[k]) for k in part]) for mode, side in (("none", none), ("rag", rag))]
        print(f"    kenning compare --base {' '.join(quartile[0])} --with {' '.join(quartile[1])}")

    if args.threshold is not None:
        chosen, parts = args.threshold, {"all": keys}
    else:
        first = [k for k in keys if design(k)]
        finite = sorted(conf[k] for k in first if conf[k] > -math.inf)
        candidates = [-math.inf] + [finite[len(finite) * d // 10] for d in range(1, 10)] + [math.inf]
        results = [(mean_similarity(policy(first, none, rag, conf, t)), t) for t in candidates]
        for es, t in results:
            share = sum(conf[k] < t for k in first) / len(first)
            print(f"  design: threshold {t:7.3f} (rag on {100 * share:5.1f} %): edit similarity {es:.2f}")
        chosen = max(results)[1]
        parts = {"design": first, "validation": [k for k in keys if not design(k)]}
    for name, part in parts.items():
        share = sum(conf[k] < chosen for k in part) / len(part)
        files = [write(os.path.join(args.out, f"{mode}-{name}"), mode, pairs) for mode, pairs in
                 (("none", [(k, none[k]) for k in part]), ("rag", [(k, rag[k]) for k in part]), ("gated", policy(part, none, rag, conf, chosen)))]
        print(f"{name}: {len(part)} tasks, threshold {chosen:.3f}, rag on {100 * share:.1f} %: none {mean_similarity([(k, none[k]) for k in part]):.1f}, "
              f"rag {mean_similarity([(k, rag[k]) for k in part]):.1f}, gated {mean_similarity(policy(part, none, rag, conf, chosen)):.1f}")
        print(f"  kenning compare --base {' '.join(files[0])} --with {' '.join(files[2])}")


if __name__ == "__main__":
    main()
