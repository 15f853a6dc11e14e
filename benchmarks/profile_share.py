"""Where a server's time goes, from py-spy's collapsed stacks (``server_load.py --profile``).

Each sample is charged to the module of its innermost Python frame (py-spy without native
frames: a C call counts for the Python function that made it), grouped into the parts of the
frame path. With a CPU figure per frame (``--us-per-frame``, from the same probe) the shares
become µs per frame. Samples where the server was idle (the event loop waiting in
``select``/``epoll``) are counted apart and left out of the shares.

    python benchmarks/profile_share.py PROFILE.txt [--us-per-frame 118.3] [--top 15]
    python benchmarks/profile_share.py A.txt B.txt    # side by side, with B - A
    python benchmarks/profile_share.py A.txt --within runtime/report

``--within REGEX`` also gives the share of busy samples with any frame matching REGEX (a
module's or function's inclusive time). A call's own cost is charged to the calling line.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (part, pattern on "function (file:line)"): the first that matches the innermost frame wins
PARTS: list[tuple[str, str]] = [
    ("idle (select/epoll)", r"^(select|poll|_run_once) \(.*selectors\.py|^select \("),
    ("quality report", r"runtime/report\.py|media/levels\.py"),
    ("metrics", r"server/metrics\.py|runtime/observer\.py|prometheus_client"),
    ("speech", r"mediastream/voice/"),
    ("recording", r"media/recording/|runtime/pieces\.py"),
    ("codecs", r"mediastream/codecs/|audioop|G722"),
    ("pydantic", r"pydantic"),
    ("session and protocol", r"mediastream/session\.py|mediastream/protocol/|jitter\.py"),
    ("runtime (connection, core, call)", r"mediastream/runtime/"),
    ("websockets", r"websockets/"),
    ("picows", r"picows|aiofastnet"),
    ("server adapters", r"mediastream/server/"),
    ("asyncio", r"asyncio/|selectors\.py|uvloop"),
    ("benchmark handler", r"server_load\.py"),
    ("json/base64", r"json/|base64\.py"),
]
_COMPILED = [(part, re.compile(pattern)) for part, pattern in PARTS]


def read(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """Samples per part and per innermost function, and the total."""
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        part = next((p for p, rx in _COMPILED if rx.search(leaf)), "other")
        parts[part] += n
        leaves[leaf] += n
        total += n
    return parts, leaves, total


def within(path: Path, pattern: str) -> tuple[int, int]:
    """Busy samples with a frame matching ``pattern``, and all busy samples."""
    rx, idle = re.compile(pattern), _COMPILED[0][1]
    hits = busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if idle.search(frames[-1]):
            continue
        busy += int(count)
        if any(rx.search(frame.rstrip(")")) for frame in frames):
            hits += int(count)
    return hits, busy


def busy_shares(parts: Counter[str], total: int) -> dict[str, float]:
    idle = parts.get(PARTS[0][0], 0)
    busy = max(1, total - idle)
    return {p: n / busy for p, n in parts.items() if p != PARTS[0][0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument(
        "--us-per-frame", type=float, nargs="+", help="CPU µs per frame of each profile's probe"
    )
    parser.add_argument("--top", type=int, default=12, help="innermost functions listed")
    parser.add_argument("--within", metavar="REGEX", help="inclusive share of matching frames")
    args = parser.parse_args()
    read_all = [read(p) for p in args.profiles]
    shares = [busy_shares(parts, total) for parts, _, total in read_all]
    costs = args.us_per_frame or []
    names = sorted({p for s in shares for p in s}, key=lambda p: -max(s.get(p, 0) for s in shares))
    header = " | ".join(f"{p.name}" for p in args.profiles)
    print(f"| part | {header} |" + (" B - A |" if len(shares) == 2 else ""))
    print("|---|" + "---:|" * (len(shares) + (len(shares) == 2)))
    for part in names:
        cells = []
        values = []
        for i, s in enumerate(shares):
            share = s.get(part, 0.0)
            value = share * costs[i] if i < len(costs) else None
            values.append(value)
            cells.append(f"{share:5.1%}" + (f" {value:5.1f} µs" if value is not None else ""))
        extra = ""
        if len(shares) == 2 and None not in values:
            extra = f" {values[1] - values[0]:+5.1f} µs |"  # type: ignore[operator]
        print(f"| {part} | " + " | ".join(cells) + " |" + extra)
    for (parts, leaves, total), path in zip(read_all, args.profiles, strict=True):
        idle = parts.get(PARTS[0][0], 0)
        print(f"\n{path.name}: {total} samples, {idle / max(1, total):.0%} idle; innermost:")
        for leaf, n in leaves.most_common(args.top):
            print(f"  {n / max(1, total - idle):5.1%}  {leaf}")
    for i, path in enumerate(args.profiles):
        if args.within:
            hits, busy = within(path, args.within)
            cost = f", {hits / busy * costs[i]:.1f} µs a frame" if i < len(costs) else ""
            print(
                f"{path.name}: {hits} of {busy} busy samples within /{args.within}/"
                f" ({hits / max(1, busy):.1%}{cost})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
