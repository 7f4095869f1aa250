"""The latest recorded verdict of every mutant of today's code, from the committed records.

Usage: python scripts/mutation_ledger.py [MUTANTS_DIR]   (default: mutants)

The mutant names come from a mutants/ tree that scripts/mutation.sh made from the current
sources: its mutmut runs don't need to have finished. The verdicts come from
benchmarks/results/mutation/*-status.txt, read in session order, with the latest record of a
name winning, and from equivalent.txt. Prints the counts, then every mutant with no record
or with a survivor verdict that no later record or equivalent entry resolves. Exits 1 if
there is one. The records follow mutmut's numbering at the time they were written; a
function changed since then needs its mutants checked again (report.md, session 19).
"""

import json
import pathlib
import re
import sys
from collections import Counter

from mutation_summary import EQUIVALENT, read_equivalent

RECORDS = EQUIVALENT.parent
# Written before the session-numbered files (sessions 7-9).
EARLY = ["accumulators", "gbc", "parc", "sfda", "scores-leep-nce-joint"]


def _records() -> dict[str, str]:
    sessions = sorted(
        RECORDS.glob("session*-status.txt"), key=lambda p: int(re.findall(r"\d+", p.name)[0])
    )
    latest = {}
    for path in [RECORDS / f"{name}-status.txt" for name in EARLY] + sessions:
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, text = line.partition(" ")
                latest[name.rstrip(":")] = text.strip().lower()
    return latest


def _verdict(text: str) -> str:
    if "removed" in text or "not killed" in text:
        return "open"
    if "equivalent" in text:
        return "equivalent"
    if "killed" in text or text.startswith(("timeout", "crash")):
        return "killed"
    return "survived"


def main(tree: pathlib.Path) -> int:
    names = [
        name
        for meta in sorted(tree.rglob("*.py.meta"))
        for name in json.loads(meta.read_text())["exit_code_by_key"]
    ]
    latest = _records()
    equivalent = read_equivalent()
    counts, left = Counter(), []
    for name in names:
        verdict = _verdict(latest[name]) if name in latest else "no record"
        if verdict == "survived" and name in equivalent:
            verdict = "equivalent"
        counts[verdict] += 1
        if verdict not in ("killed", "equivalent"):
            left.append(f"{verdict}: {name}")
    print(f"{len(names)} mutants: " + ", ".join(f"{n} {v}" for v, n in counts.most_common()))
    for line in left:
        print(line)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")))
