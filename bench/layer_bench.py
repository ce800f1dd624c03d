"""Layer benchmark: store.layer.write_layer and LocalContentStore ingest against their limits.

Run `python bench/layer_bench.py [--json FILE] [--runs N] [--dir DIR]` with
the project's interpreter (it imports `store`). It builds its inputs once in a
temporary directory (deterministic seed), then reports, in one run:
  (a) write_layer throughput on a 1 GiB tree of 64 16 MiB files of the
      reference workloads' half-compressible data (rotated copies of the
      static busybox, zstd ratio ~0.5), against the limit on the same bytes
      without tar: sha256 plus zstandard at the store's level with 2 threads;
  (b) write_layer files per second on 50,000 small files in nested
      directories, against CPython tarfile writing the same tree, uncompressed,
      to a file;
  (c) ingest of one 1 GiB file through LocalContentStore.writer() (read,
      hash, write, commit with fsync) against `cp` of the same file on the
      same filesystem.
Figures are medians of interleaved runs after one untimed round; only ratios
within one run mean anything on a machine that varies by 20-30%. It reports
and never asserts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import zstandard

from store.compression import ZSTD_LEVEL, Compression, compressor
from store.digest import Digester
from store.layer import write_layer
from store.local import LocalContentStore
from store.tarwriter import write_tree

SEED = 20240601
BIG_FILES, BIG_FILE_SIZE, PIECE = 64, 16 << 20, 64 << 10
SMALL_FILES, SMALL_TOP, SMALL_MID = 50_000, 50, 20
INGEST_SIZE = 1 << 30
CHUNK = 1 << 20
TARGET_WRITE = 0.80  # write_layer / (sha256 + zstd) throughput
TARGET_SMALL = 3.0  # write_layer / tarfile, files per second
LINE = b"%08d the quick brown fox jumps over the lazy dog, pack my box with five dozen jugs\n"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static, as in the reference workloads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write the figures to FILE as JSON")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each measure (default 3)")
    parser.add_argument("--dir", type=Path, help="where the ~3 GiB of inputs and outputs go (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pybuild-layer-bench-", dir=args.dir))
    try:
        return run(work, max(1, args.runs), args.json)
    finally:
        if args.keep:
            print(f"inputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, runs: int, json_path: Path | None) -> int:
    started = time.perf_counter()
    print(f"generating inputs in {work} ...", flush=True)
    big, small, one = work / "big", work / "small", work / "one.bin"
    generate_big(big)
    generate_small(small)
    generate_one(one, big)
    print(f"  done in {time.perf_counter() - started:.1f} s; {runs} interleaved runs per measure\n", flush=True)

    big_bytes = sum(p.stat().st_size for p in big.iterdir())
    samples: dict[str, list[float]] = {}

    def sample(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    # One untimed round first: the first writes of a run touch fresh memory for
    # the page cache, which on a VM can cost more than the work measured.
    sha256_zstd(big)
    timed_layer(work, big)
    timed_ingest(work, one)
    timed_cp(one, work / "copy.bin", sync=True)
    for _ in range(runs):
        sample("limit", timed(lambda: sha256_zstd(big)))
        sample("write_layer_big", timed_layer(work, big))
        sample("tar_only", timed(lambda: tar_hash_zstd(big)))
        sample("limit_store", timed_limit_store(work, big))
    for _ in range(runs):
        sample("tarfile_small", timed(lambda: tarfile_write(small, work / "small.tar")))
        sample("write_layer_small", timed_layer(work, small))
    for _ in range(runs):
        sample("ingest", timed_ingest(work, one))
        sample("cp", timed_cp(one, work / "copy.bin", sync=False))
        sample("cp_fsync", timed_cp(one, work / "copy.bin", sync=True))

    med = {name: statistics.median(values) for name, values in samples.items()}
    def row(label: str, mine: str, base: str, amount: float, unit: str, target: float | None = None) -> tuple:
        """(measure, pybuild figure, baseline figure, unit, ratio, target): `amount` per second of each."""
        scale = 1e6 if unit == "MB/s" else 1
        return label, amount / med[mine] / scale, amount / med[base] / scale, unit, med[base] / med[mine], target

    rows = [
        row("(a) write_layer, 1 GiB tree", "write_layer_big", "limit", big_bytes, "MB/s", TARGET_WRITE),
        row("    tar + diffID + zstd, no store", "tar_only", "limit", big_bytes, "MB/s"),
        row("    vs limit + store ingest, no tar", "write_layer_big", "limit_store", big_bytes, "MB/s"),
        row("(b) write_layer, 50k small files", "write_layer_small", "tarfile_small", SMALL_FILES, "files/s", TARGET_SMALL),
        row("(c) ingest 1 GiB vs cp", "ingest", "cp", INGEST_SIZE, "MB/s"),
        row("    ingest vs cp + fsync", "ingest", "cp_fsync", INGEST_SIZE, "MB/s"),
    ]
    print_table(rows)
    print(
        f"\nbaselines: (a) sha256 + zstandard level {ZSTD_LEVEL}, 2 threads, over the same file bytes without tar;"
        "\n(b) tarfile.open(mode='w', PAX) .add() of the same tree to an uncompressed file;"
        "\n(c) `cp` of the same file on the same filesystem (and `cp` then fsync)."
        "\n(a) and (b) include the store: the blob's own sha256, its write and commit's fsync;"
        "\n'limit + store ingest' adds that work to the limit (zstd output into LocalContentStore.writer())."
    )
    print(f"\nmachine: {machine()}; total {time.perf_counter() - started:.0f} s")
    if json_path is not None:
        document = {
            "machine": machine(),
            "runs": runs,
            "samples_seconds": samples,
            "medians_seconds": med,
            "rows": [
                {
                    "measure": m.strip(),
                    "pybuild": p,
                    "baseline": b,
                    "unit": u,
                    "ratio": r,
                    "target": t,
                    "met": None if t is None else r >= t,
                }
                for m, p, b, u, r, t in rows
            ],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 0


# --------------------------------------------------------------------------- inputs


def generate_big(root: Path) -> None:
    """64 files of 16 MiB of the reference workloads' half-compressible data (../shared/bench/w3):
    copies of the static busybox binary, copy k with every byte rotated by k mod 256, 1 GiB in all."""
    busybox = Path(BUSYBOX).read_bytes()
    root.mkdir()
    stream = _rotations(busybox)
    pending = b""
    for index in range(BIG_FILES):
        while len(pending) < BIG_FILE_SIZE:
            pending += next(stream)
        (root / f"blob{index:02d}.bin").write_bytes(pending[:BIG_FILE_SIZE])
        pending = pending[BIG_FILE_SIZE:]


def _rotations(data: bytes) -> Iterator[bytes]:
    k = 0
    while True:
        shift = k % 256
        yield data.translate(bytes((b + shift) % 256 for b in range(256))) if shift else data
        k += 1


def generate_small(root: Path) -> None:
    """50,000 files of 200 B to 4 KiB (half random, half text) in 50 x 20 directories."""
    rng = random.Random(SEED + 1)
    per_dir = SMALL_FILES // (SMALL_TOP * SMALL_MID)
    for top in range(SMALL_TOP):
        for mid in range(SMALL_MID):
            directory = root / f"pkg{top:02d}" / f"mod{mid:02d}"
            directory.mkdir(parents=True)
            for n in range(per_dir):
                size = rng.randint(200, 4096)
                half = size // 2
                text = (LINE % n) * (half // len(LINE % n) + 1)
                (directory / f"file{n:03d}.py").write_bytes(rng.randbytes(half) + text[: size - half])


def generate_one(path: Path, big: Path) -> None:
    with open(path, "wb") as out:
        out.writelines(source.read_bytes() for source in sorted(big.iterdir()))
    assert path.stat().st_size == INGEST_SIZE


# --------------------------------------------------------------------------- measures


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def sha256_zstd(root: Path, sink: object = None) -> None:
    """The limit: sha256 and zstd (the store's level, two threads) of the tree's file bytes, without tar, into `sink`."""
    digest = hashlib.sha256()
    writer = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=2).stream_writer(sink or _Null(), closefd=False)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    for path in sorted(root.iterdir()):
        with open(path, "rb", buffering=0) as f:
            while count := f.readinto(buffer):
                digest.update(view[:count])
                writer.write(view[:count])
    writer.close()


def tar_hash_zstd(root: Path) -> None:
    """write_layer's pipeline without the content store: tar, diffID, zstd into nothing."""
    diff = Digester()
    with compressor(Compression.ZSTD, _Null()) as sink:  # type: ignore[arg-type]
        update, send = diff.update, sink.write

        def write(data: bytes | bytearray | memoryview) -> None:
            update(data)
            send(data)

        write_tree(root, write)


def timed_limit_store(work: Path, root: Path) -> float:
    """The limit's work plus the content store's (ingest of the zstd output, commit): write_layer without tar."""
    store_root = work / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = LocalContentStore(store_root)
    start = time.perf_counter()
    with store.writer() as blob:
        sha256_zstd(root, blob)
        blob.commit()
    return time.perf_counter() - start


def timed_layer(work: Path, root: Path) -> float:
    store_root = work / "store"
    shutil.rmtree(store_root, ignore_errors=True)  # freed pages are reused: steadier than fresh memory
    store = LocalContentStore(store_root)
    start = time.perf_counter()
    write_layer(root, store)
    return time.perf_counter() - start


def tarfile_write(root: Path, path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=".")


def timed_ingest(work: Path, path: Path) -> float:
    store_root = work / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = LocalContentStore(store_root)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    start = time.perf_counter()
    with store.writer() as writer, open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            writer.write(view[:count])
        writer.commit()
    return time.perf_counter() - start


def timed_cp(source: Path, dest: Path, *, sync: bool) -> float:
    dest.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(dest)], check=True)
    if sync:
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - start


class _Null:
    def write(self, data: bytes | bytearray | memoryview) -> int:
        return len(data)


# --------------------------------------------------------------------------- report


def print_table(rows: list[tuple[str, float, float, str, float, float | None]]) -> None:
    header = f"{'measure':36} {'pybuild':>12} {'baseline':>12} {'unit':8} {'ratio':>7} {'target':>7}  status"
    print(header)
    print("-" * len(header))
    for measure, mine, base, unit, ratio, target in rows:
        status = "" if target is None else ("met" if ratio >= target else "NOT met")
        shown = "" if target is None else (f">={target:.2f}" if target < 1 else f">={target:.1f}x")
        print(f"{measure:36} {mine:12,.0f} {base:12,.0f} {unit:8} {ratio:7.2f} {shown:>7}  {status}")


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"zstandard {zstandard.__version__}"
    )


if __name__ == "__main__":
    sys.exit(main())
