"""Codec throughput, ours against the installed anchors, in one run.

    python benchmarks/codecs.py [--codec PCMU] [--seconds 2] [--json]

Same harness as ``mediastream bench``; record the table in benchmarks/RESULTS.md with the
machine, date and command. Targets (checked here, reported as PASS/FAIL, never as a test):
G.711 encode at least 5x audioop's bulk throughput; G.722 single-frame decode at most 1.1x the
G722 package's time; G.722 ``decode_many`` over 256 streams at least 2x the package's frames/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import asdict

from mediastream.bench import ALL_CODECS, Result, format_table, measure


def _find(
    results: list[Result], codec: str, direction: str, shape: str, impl: str
) -> Result | None:
    for r in results:
        if (r.codec, r.direction, r.shape, r.implementation) == (codec, direction, shape, impl):
            return r
    return None


def check_targets(results: list[Result]) -> list[str]:
    lines = []
    for codec in ("PCMU", "PCMA"):
        anchor = _find(results, codec, "encode", "bulk", "audioop")
        if anchor is not None:
            ratio = anchor.ratio_to_ours or 0.0
            verdict = "PASS" if ratio >= 5 else "FAIL"
            lines.append(f"{verdict} {codec} encode bulk: {ratio:.1f}x audioop (target >= 5x)")
    anchor = _find(results, "G722", "decode", "frame", "G722 package")
    if anchor is not None and anchor.ratio_to_ours:
        ours_over_theirs = 1 / anchor.ratio_to_ours
        verdict = "PASS" if ours_over_theirs <= 1.1 else "FAIL"
        lines.append(
            f"{verdict} G722 decode frame: {ours_over_theirs:.2f}x the G722 package's time "
            "(target <= 1.1x)"
        )
    anchor = _find(results, "G722", "decode", "256x", "G722 package")
    if anchor is not None and anchor.ratio_to_ours:
        verdict = "PASS" if anchor.ratio_to_ours >= 2 else "FAIL"
        lines.append(
            f"{verdict} G722 decode_many over 256 streams: {anchor.ratio_to_ours:.1f}x the G722 "
            "package's frames/s one by one (target >= 2x)"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", action="append", choices=ALL_CODECS)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = measure(args.codec or list(ALL_CODECS), args.seconds, progress=not args.json)
    targets = check_targets(results)
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "targets": targets}, indent=2))
        return 0
    print(f"# {platform.node()} {platform.machine()} Python {sys.version.split()[0]}")
    print(format_table(results))
    print("anchor/ours > 1 means ours takes less time than the anchor.")
    print("\n".join(targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
