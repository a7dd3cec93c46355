#!/usr/bin/env python3
"""Runs ONNX node conformance cases through modelloader.

usage: conformance.py [-k SUBSTRING] [-v] [--write-allowlist]

Prints one line per failing case (and a summary). ``--write-allowlist`` rewrites
tests/conformance/allowlist.txt with every passing case; exclusions.txt keeps a
reason for each case that is not on it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "conformance"))
import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="print a traceback for each failure")
    ap.add_argument("--write-allowlist", action="store_true")
    args = ap.parse_args()
    names = sorted(n for n in harness.cases() if args.k in n)
    passed, failed = [], {}
    for name in names:
        try:
            harness.run_case(name)
            passed.append(name)
        except Exception as e:  # noqa: BLE001  reported below
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            failed[name] = msg
            print(f"FAIL {name}: {msg}")
            if args.v:
                traceback.print_exc()
    print(f"{len(passed)} passed, {len(failed)} failed (of {len(names)})")
    if args.write_allowlist:
        if args.k:
            sys.exit("--write-allowlist needs the full run (no -k)")
        harness.ALLOWLIST.write_text("".join(f"{n}\n" for n in passed))
        reasons = harness.read_list(harness.EXCLUSIONS)
        lines = [f"{n}: {reasons.get(n) or failed[n]}\n" for n in sorted(failed)]
        harness.EXCLUSIONS.write_text(
            "# ONNX node conformance cases modelloader does not pass, each with its reason.\n"
            + "".join(lines)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
