"""Maintenance benchmark: files and read time of ``gold/audience_members`` before and after.

Not a test. Builds ``gold/audience_members`` in a local lake the way incremental transforms
leave it: one full write of ``--members`` memberships over ``--segments`` segments
(partitioned by segment), then ``--commits`` small upserts (``Lake.upsert``, the incremental
writer's primitive) that each add ``--change`` x members new memberships and re-score
``--rescore`` times as many recent ones. Then it measures, before
and after one maintenance pass (``maintain_table``: Z-order by ``contact_key``, checkpoint,
vacuum with the default 168 h retention), and prints:

* data files and MiB of the current version, and the commits in the log;
* open: a fresh ``Lake`` reading the table's version (replays the log, or the checkpoint);
* full read: ``lake.read`` of the whole table;
* segment read: one segment, as publish reads it (partition pruning);
* key lookup: 100 contact keys, as the incremental transform reads changed people (file
  statistics prune files once the table is Z-ordered);
* the maintenance wall time.

Each read is the median of ``--reads`` runs.

    .venv/bin/python -m benchmarks.maintain_bench --members 20000 --commits 100
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from tasks.connectors.lake import Lake, file_stats, maintain_table

AUDIENCE = "gold/audience_members"
KEYS = ["segment", "contact_key"]


def _key(i: int) -> str:
    return hashlib.sha256(f"contact-{i}".encode()).hexdigest()


def _members(ids: list[int], segments: int, version: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "segment": [f"segment_{i % segments}" for i in ids],
            "contact_key": [_key(i) for i in ids],
            "score": [float((i * 31 + version) % 1000) for i in ids],
            "run_id": [f"run-{version}"] * len(ids),
        }
    )


def build(
    lake: Lake, *, members: int, segments: int, commits: int, change: float, rescore: float
) -> int:
    """The full write, then ``commits`` incremental upserts; returns the final member count.

    Each upsert brings ``change`` x ``members`` new memberships (people who joined a segment)
    and re-scores ``rescore`` times as many recent ones, as an incremental run does.
    """
    lake.upsert(AUDIENCE, _members(list(range(members)), segments, 0), keys=KEYS,
                partition_by=["segment"])  # fmt: skip
    joined = max(1, int(members * change))
    total = members
    for version in range(1, commits + 1):
        new = list(range(total, total + joined))
        rescored = list(range(max(0, total - joined), total))[: int(joined * rescore)]
        lake.upsert(AUDIENCE, _members(rescored + new, segments, version), keys=KEYS)
        total += joined
    return total


@dataclass(frozen=True)
class Measure:
    files: int
    mib: float
    commits: int
    open_s: float
    full_s: float
    segment_s: float
    lookup_s: float


def _median(reads: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(reads):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(lake: Lake, *, members: int, reads: int) -> Measure:
    lookup = [_key(i) for i in range(0, members, max(1, members // 100))][:100]
    with lake.delta_table(AUDIENCE, "measure") as delta:
        stats = file_stats(delta)
        commits = delta.version() + 1

    def open_fresh() -> object:
        return Lake(lake.root).version(AUDIENCE)

    return Measure(
        files=stats.files,
        mib=stats.bytes / 2**20,
        commits=commits,
        open_s=_median(reads, open_fresh),
        full_s=_median(reads, lambda: lake.read(AUDIENCE)),
        segment_s=_median(
            reads, lambda: lake.scan(AUDIENCE).filter(pl.col("segment") == "segment_0").collect()
        ),
        lookup_s=_median(
            reads, lambda: lake.scan(AUDIENCE).filter(pl.col("contact_key").is_in(lookup)).collect()
        ),
    )


def report(before: Measure, after: Measure, maintain_s: float) -> str:
    rows = [
        ("data files", f"{before.files}", f"{after.files}"),
        ("MiB", f"{before.mib:.2f}", f"{after.mib:.2f}"),
        ("commits in the log", f"{before.commits}", f"{after.commits}"),
        ("open (fresh Lake) s", f"{before.open_s:.3f}", f"{after.open_s:.3f}"),
        ("full read s", f"{before.full_s:.3f}", f"{after.full_s:.3f}"),
        ("segment read s", f"{before.segment_s:.3f}", f"{after.segment_s:.3f}"),
        ("100-key lookup s", f"{before.lookup_s:.3f}", f"{after.lookup_s:.3f}"),
    ]
    lines = [f"{'':<22} {'before':>10} {'after':>10}"]
    lines += [f"{name:<22} {a:>10} {b:>10}" for name, a, b in rows]
    lines.append(f"maintenance took {maintain_s:.2f} s (Z-order by contact_key, checkpoint)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=20000, help="memberships (default 20000)")
    parser.add_argument("--segments", type=int, default=4, help="segments (default 4)")
    parser.add_argument("--commits", type=int, default=100, help="small upserts (default 100)")
    parser.add_argument(
        "--change", type=float, default=0.005, help="share changed per upsert (default 0.005)"
    )
    parser.add_argument(
        "--rescore",
        type=float,
        default=0.0,
        help="re-scored recent members per new one in each upsert (default 0)",
    )
    parser.add_argument("--reads", type=int, default=5, help="runs per read timing (default 5)")
    parser.add_argument("--work", help="keep the lake in this directory")
    args = parser.parse_args(argv)

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="maintain-bench-"))
    try:
        lake = Lake(str(root / "lake"))
        started = time.perf_counter()
        total = build(
            lake,
            members=args.members,
            segments=args.segments,
            commits=args.commits,
            change=args.change,
            rescore=args.rescore,
        )
        print(
            f"built {AUDIENCE}: {args.members} members, then {args.commits} upserts of "
            f"{args.change:.1%} new members each ({total} in the end) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        before = measure(lake, members=args.members, reads=args.reads)
        rows_before = lake.read(AUDIENCE).sort(KEYS)
        started = time.perf_counter()
        maintain_table(lake, AUDIENCE, z_order=["contact_key"], retention_hours=168)
        maintain_s = time.perf_counter() - started
        after = measure(lake, members=args.members, reads=args.reads)
        same = lake.read(AUDIENCE).sort(KEYS).equals(rows_before)
        print(report(before, after, maintain_s))
        print("rows identical before and after: " + ("yes" if same else "NO"))
        return 0 if same else 1
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
