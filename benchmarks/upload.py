"""Which S3 client uploads recordings: obstore against aioboto3, on a real local SeaweedFS.

Both clients run in the same invocation, each in a fresh child process per round (so that
import time and memory are its own), rounds interleaved: obstore, aioboto3, obstore, ...
Each child measures:

* ``import``: the wall time of importing the client (obstore: ``obstore`` and its S3 store;
  aioboto3: ``aioboto3``), and the resident memory (VmRSS) it added;
* ``upload``: ``--files`` recordings of ``--min-mb`` to ``--max-mb`` (random sizes, fixed seed,
  random bytes: nothing compresses), ``--concurrency`` at once, each one PUT, as the uploader
  sends them; wall time, throughput, per-file latency (p50, p99), the CPU time of the whole
  process (its threads included: obstore's requests run in Rust threads), and the resident
  memory after (VmRSS) and at its peak (VmHWM).

obstore is given the file's path (it reads it itself, off the event loop); aioboto3 the bytes,
read in a worker thread (its ``put_object`` takes a body; ``upload_file`` would add
s3transfer's threads for no gain at these sizes).

    pip install -e '.[test]' aioboto3
    python benchmarks/upload.py [--files 100] [--min-mb 1] [--max-mb 5] [--concurrency 8]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLIENTS = ("obstore", "aioboto3")


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- the child


async def upload_obstore(
    store: Any, files: list[Path], prefix: str, concurrency: int
) -> list[float]:
    import obstore

    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> float:
        async with gate:
            started = time.perf_counter()
            await obstore.put_async(store, f"{prefix}/{path.name}", path, use_multipart=False)
            return time.perf_counter() - started

    return list(await asyncio.gather(*(one(p) for p in files)))


async def upload_aioboto3(
    session: Any, env: dict[str, str], bucket: str, files: list[Path], prefix: str,
    concurrency: int,
) -> list[float]:  # fmt: skip
    gate = asyncio.Semaphore(concurrency)
    async with session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]) as s3:

        async def one(path: Path) -> float:
            async with gate:
                started = time.perf_counter()
                body = await asyncio.to_thread(path.read_bytes)
                await s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=body)
                return time.perf_counter() - started

        return list(await asyncio.gather(*(one(p) for p in files)))


def child(client: str, folder: Path, bucket: str, prefix: str, concurrency: int) -> None:
    """One client, one round: print its figures as JSON."""
    env = os.environ
    files = sorted(folder.iterdir())
    before = rss_kib()
    started = time.perf_counter()
    if client == "obstore":
        import obstore.store

        imported = time.perf_counter() - started
        store = obstore.store.S3Store(
            bucket, endpoint=env["AWS_ENDPOINT_URL"], region=env["AWS_REGION"],
            client_options={"allow_http": True},
        )  # fmt: skip
        run = upload_obstore(store, files, prefix, concurrency)
    else:
        import aioboto3

        imported = time.perf_counter() - started
        session = aioboto3.Session()
        run = upload_aioboto3(session, dict(env), bucket, files, prefix, concurrency)
    after_import = rss_kib()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    latencies = asyncio.run(run)
    wall = time.perf_counter() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    total = sum(p.stat().st_size for p in files)
    latencies.sort()
    print(json.dumps({
        "client": client,
        "import_ms": imported * 1000,
        "import_rss_mib": (after_import - before) / 1024,
        "rss_after_mib": rss_kib() / 1024,
        "rss_peak_mib": rss_kib("VmHWM") / 1024,
        "wall_s": wall,
        "mb_per_s": total / 1e6 / wall,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000,
    }), flush=True)  # fmt: skip
    # obstore 0.12 sometimes aborts (SIGABRT) in interpreter teardown right after its last
    # request, its figures already printed: leave without the teardown
    os._exit(0)


# ---------------------------------------------------------------------- the parent


def make_files(folder: Path, count: int, low_mb: float, high_mb: float) -> int:
    rng = random.Random(18)
    total = 0
    for n in range(count):
        size = int(rng.uniform(low_mb, high_mb) * 1e6)
        (folder / f"call-{n:03d}.wav").write_bytes(rng.randbytes(size))
        total += size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--min-mb", type=float, default=1.0)
    parser.add_argument("--max-mb", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.bucket, args.prefix, args.concurrency)
        return

    sys.path.insert(0, str(REPO))
    from tests.storage_server import SeaweedS3

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "files"
        folder.mkdir()
        total = make_files(folder, args.files, args.min_mb, args.max_mb)
        print(f"{args.files} files, {total / 1e6:.0f} MB, {args.concurrency} at once, "
              f"{args.rounds} rounds per client", flush=True)  # fmt: skip
        results: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
        with SeaweedS3.started(root / "seaweed") as store:
            env = {**os.environ, **store.env(), "PYTHONPATH": str(REPO)}
            # the store's first writes allocate its volumes: a round of each, not counted
            rounds = [(-1, c) for c in CLIENTS]
            rounds += [(n, c) for n in range(args.rounds) for c in CLIENTS]
            for n, client in rounds:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", client, "--folder", str(folder),
                     "--bucket", store.bucket, "--prefix", f"{client}-{n}",
                     "--concurrency", str(args.concurrency)],
                    capture_output=True, text=True, env=env, check=True, timeout=600,
                )  # fmt: skip
                figures = json.loads(out.stdout.strip().splitlines()[-1])
                if n >= 0:
                    results[client].append(figures)
                    print(f"round {n + 1} {client}: {figures['mb_per_s']:.0f} MB/s", flush=True)
    columns = ("import_ms", "import_rss_mib", "rss_after_mib", "rss_peak_mib", "mb_per_s",
               "cpu_s", "p50_ms", "p99_ms")  # fmt: skip
    print(f"\n{'client':<10}" + "".join(f"{c:>15}" for c in columns))
    for client, runs in results.items():
        # the median round of each figure
        row = [statistics.median(r[c] for r in runs) for c in columns]
        print(f"{client:<10}" + "".join(f"{v:>15.1f}" for v in row))
    print("(medians over rounds; MiB resident; cpu_s: the whole process, threads included)")


if __name__ == "__main__":
    main()
