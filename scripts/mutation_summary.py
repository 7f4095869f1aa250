"""Summarises mutmut's results (mutants/**/*.meta) per module; used by scripts/mutation.sh.

Usage: python scripts/mutation_summary.py [GLOB...]   (mutant-name globs, all if none)

Prints, per module, the mutants, killed, survived and how many survivors are listed as
equivalent in benchmarks/results/mutation/equivalent.txt (lines "mutant_name  reason"),
then every other survivor with its diff (``mutmut show``). Exits 1 if one is left.
"""

import fnmatch
import json
import pathlib
import subprocess
import sys

KILLED = {1, 3}
EQUIVALENT = pathlib.Path("benchmarks/results/mutation/equivalent.txt")


def read_equivalent() -> dict[str, str]:
    """The listed equivalent mutants, name -> reason."""
    out = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, reason = line.strip().partition(" ")
                out[name] = reason.strip()
    return out


def main(globs: list[str]) -> int:
    equivalent = read_equivalent()
    rows, left = [], []
    for meta in sorted(pathlib.Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        codes = {
            k: v for k, v in codes.items() if not globs or any(fnmatch.fnmatch(k, g) for g in globs)
        }
        if not codes:
            continue
        killed = sum(v in KILLED for v in codes.values())
        survived = [k for k, v in codes.items() if v == 0]
        other = len(codes) - killed - len(survived)
        eq = [k for k in survived if k in equivalent]
        left += [k for k in survived if k not in equivalent]
        scored = killed + len(survived)
        score = (killed + len(eq)) / scored if scored else float("nan")
        module = str(meta.relative_to("mutants"))[: -len(".meta")]
        rows.append((module, len(codes), killed, len(survived), len(eq), other, score))
    print(f"{'module':44} mutants killed survived equivalent other score")
    for module, n, killed, survived, eq, other, score in rows:
        print(f"{module:44} {n:7} {killed:6} {survived:8} {eq:10} {other:5} {score:6.1%}")
    print(
        "(other: not checked, no tests, timeout or suspicious; score: (killed + equivalent)"
        " / (killed + survived))"
    )
    for name in left:
        print(f"\nSURVIVED {name}")
        subprocess.run([pathlib.Path(sys.executable).parent / "mutmut", "show", name], check=False)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
