"""Where the step time goes: the TensorFlow ops of a profiled fit, grouped by what they do.

Run the trainer with ``--set train.profile_steps=FIRST,LAST`` (the TensorFlow
profiler traces those steps; Keras' ``TensorBoard(profile_batch=...)``), then::

    python tools/profile_steps.py JOB/tensorboard [--steps N] [--top 15]

It reads the newest ``*.xplane.pb`` under the directory with TensorFlow's own
converter (the ``framework_op_stats`` table: TensorBoard's Profile tab, "TensorFlow
stats"), sums each op's self time on the host (idle time left out), and prints
the totals per group, per profiled step when ``--steps`` is given:

* ``collective``  all-reduce / all-gather / broadcast between workers (``Collective*``),
* ``input``       tf.data: reading, parsing and batching the examples, and the step
                  waiting for the next batch (the root iterator's self time),
* ``optimizer``   the variable updates (``ResourceApply*``, ``ResourceScatter*``, ...),
* ``compute``     every other op (the forward and backward pass).

On a CPU the self times are summed over TensorFlow's threads, so a group's total
can exceed the wall time of the steps. Under MultiWorkerMirroredStrategy only
the chief's TensorBoard callback writes a profile; its collective ops' self time
includes waiting for the slower peer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

GROUPS = ("collective", "input", "optimizer", "compute")
_INPUT_PREFIXES = ("Dataset", "Iterator", "ParseExample", "TFRecord", "MultiDeviceIterator", "ParallelMap",
                   "ParallelInterleave", "Shuffle", "Batch", "Prefetch", "Map", "Interleave", "Repeat",
                   "Take", "FlatMap", "OptionsDataset", "ModelDataset", "Filter")
_OPTIMIZER_PREFIXES = ("ResourceApply", "ResourceSparseApply", "ResourceScatter", "AssignAddVariable",
                       "AssignSubVariable", "AssignVariable")


def group_of(op_type: str, op_name: str) -> str:
    """The group of one op (by its type, then its name)."""
    if "Collective" in op_type or "Collective" in op_name or "Nccl" in op_type:
        return "collective"
    if op_type.startswith(_INPUT_PREFIXES) or "Iterator::" in op_name:
        return "input"
    if op_type.startswith(_OPTIMIZER_PREFIXES):
        return "optimizer"
    return "compute"


def newest_xplane(root: Path) -> Path:
    planes = sorted(root.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not planes:
        raise SystemExit(f"no *.xplane.pb under {root}: run the trainer with --set train.profile_steps=FIRST,LAST "
                         "(and --job-dir pointing at this directory's parent)")
    return planes[-1]


def op_table(xplane: Path) -> list[dict]:
    """Rows of TensorFlow's ``framework_op_stats`` tool: type, name, host self time (us)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    raw, ok = plugin.xspace_to_tools_data([str(xplane)], "framework_op_stats", {})
    if not ok:
        raise SystemExit(f"TensorFlow could not convert {xplane}")
    table = json.loads(raw)
    table = table[0] if isinstance(table, list) else table
    columns = [c["id"] for c in table["cols"]]

    def col(column: str) -> int:
        if column not in columns:
            raise SystemExit(f"{xplane}: the framework_op_stats table has no column {column} (columns: {columns})")
        return columns.index(column)

    host, kind, name, self_us = col("host_or_device"), col("type"), col("operation"), col("total_self_time")
    rows = []
    for row in table["rows"]:
        cells = [c.get("v") if isinstance(c, dict) else c for c in row["c"]]
        if str(cells[host]).lower() != "host" or cells[kind] == "IDLE":
            continue
        rows.append({"type": str(cells[kind]), "name": str(cells[name]), "self_us": float(cells[self_us])})
    return rows


def summarize(rows: list[dict], steps: int | None) -> dict:
    """Per group and per op type: ms (per step when ``steps`` is given), and each group's share."""
    totals = {g: 0.0 for g in GROUPS}
    by_type: dict[str, float] = {}
    for row in rows:
        totals[group_of(row["type"], row["name"])] += row["self_us"]
        by_type[row["type"]] = by_type.get(row["type"], 0.0) + row["self_us"]
    per = 1000.0 * max(1, steps or 1)
    return {"steps": steps, "ms": {g: round(totals[g] / per, 2) for g in GROUPS},
            "share": {g: round(totals[g] / max(sum(totals.values()), 1e-9), 3) for g in GROUPS},
            "ms_by_type": {t: round(us / per, 2) for t, us in sorted(by_type.items(), key=lambda kv: -kv[1])}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/profile_steps.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", help="the job's tensorboard directory (or any directory holding *.xplane.pb)")
    parser.add_argument("--steps", type=int, help="profiled steps (LAST - FIRST + 1): totals are divided by it")
    parser.add_argument("--top", type=int, default=12, help="the slowest op types to list")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args(argv)
    xplane = newest_xplane(Path(args.logdir))
    rows = op_table(xplane)
    summary = summarize(rows, args.steps)
    summary["xplane"] = str(xplane)
    if args.json:
        print(json.dumps(summary))
        return 0
    unit = "ms per step" if args.steps else "ms in all"
    print(f"{xplane}\nhost op self time by group ({unit}; summed over threads):")
    for g in GROUPS:
        print(f"  {g:11} {summary['ms'][g]:10.2f}  {100 * summary['share'][g]:5.1f} %")
    print(f"slowest op types ({unit}):")
    for op_type, ms in list(summary["ms_by_type"].items())[: args.top]:
        print(f"  {op_type:40} {ms:10.2f}  ({group_of(op_type, '')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
