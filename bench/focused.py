"""Writing a focused measurement (join_cost, journal_fsync): its runs, their means per
variant, the command and the machine, as `bench/results/<name>-<time>.json`."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_focused"]


def write_focused(
    name: str,
    argv: Sequence[str] | None,
    runs: Sequence[dict[str, Any]],
    variant_key: str,
    keys: Sequence[str],
    output_dir: Path,
) -> Path:
    """Write the run file and print the means; returns its path. Each run is a dict
    with its variant under `variant_key` and a number under each of `keys`."""
    variants = list(dict.fromkeys(run[variant_key] for run in runs))
    mean = {
        variant: {
            key: round(statistics.mean(r[key] for r in runs if r[variant_key] == variant), 4)
            for key in keys
        }
        for variant in variants
    }
    record = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": f"python -m bench.{name.replace('-', '_')} "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()},
        "runs": list(runs),
        "mean": mean,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    for variant, numbers in mean.items():
        print(f"{variant:>8}: {numbers}")
    print(f"written to {path}")
    return path
