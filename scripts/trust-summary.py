#!/usr/bin/env python3
"""Summarises trust-table.jsonl (scripts/trust-table.sh) as a markdown table: per
strategy (or pair) and chunk count, the runs, and the worst figures over fractions
and seeds."""
import json, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else "trust-table.jsonl") if l.startswith("{")]
by = defaultdict(list)
for r in rows:
    by[(r["chunks"], r["strategy"])].append(r)
print("| chunks | strategy | runs | wrong accepted (max) | honest excluded (max) | jobs done | replicas/chunk (mean) | after warm-up (mean) |")
print("|---|---|---|---|---|---|---|---|")
bad = []
for (n, s), rs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] != "none", kv[0][1].count(","), kv[0][1])):
    done = sum(r["job_state"] == "done" for r in rs)
    w = max(r["wrong_accepted"] for r in rs)
    h = max(r["honest_excluded"] for r in rs)
    rpc = sum(r["replicas_per_chunk"] for r in rs) / len(rs)
    aw = sum(r["replicas_per_chunk_after_warmup"] for r in rs) / len(rs)
    print(f"| {n} | {s} | {len(rs)} | {w} | {h} | {done}/{len(rs)} | {rpc:.3f} | {aw:.3f} |")
    bad += [r for r in rs if r["wrong_accepted"] or r["honest_excluded"] or r["job_state"] != "done"]
print(f"\n{len(rows)} runs; {len(bad)} with a wrong result accepted, an honest peer excluded or the job not done")
for r in bad:
    print(f"- {r['chunks']} chunks, {r['strategy']} at {r['adversaries']}, seed {r['seed']}: wrong {r['wrong_accepted']}, honest excluded {r['honest_excluded']}, {r['job_state']} {r['job_error'] or ''}")
