"""Plots for BENCHMARKS.md from bench/results/*.json: P3 latency percentiles against decision
rate, and P4 resident memory against held streams.

    python -m bench.plots   (writes docs/bench-p3-resume.png and docs/bench-p4-memory.png)
"""

from __future__ import annotations

import json
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen: render to files
import matplotlib.pyplot as plt

from bench.common import RESULTS
from tests.processes import ROOT

DOCS = ROOT / "docs"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def plot_resume(result: dict[str, Any]) -> None:
    rows = result["rows"]
    rates = [r["rate"] for r in rows]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        axes.plot(rates, [r[key] for r in rows], marker="o", label=f"approve -> resume {label}")
    axes.plot(rates, [r["ping_p99_ms"] for r in rows], "k--", label="Redis PING p99 (floor)")
    axes.axhline(10, color="red", linewidth=0.8, linestyle=":", label="target p99 (10 ms)")
    axes.axhline(2, color="orange", linewidth=0.8, linestyle=":", label="target p50 (2 ms)")
    axes.set_xlabel("decisions per second (3 replicas)")
    axes.set_ylabel("milliseconds")
    axes.set_yscale("log")
    axes.set_title("P3: decision on replica B -> first resumed event on replica A")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(DOCS / "bench-p3-resume.png", dpi=110)
    plt.close(figure)


def plot_memory(result: dict[str, Any]) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.2))
    for name, samples in result["rss_samples"].items():
        streams = [s[0] for s in samples]
        axes.plot(streams, [s[1] / 2**20 for s in samples], marker="o", label=name)
    axes.set_xlabel("held streams on one process")
    axes.set_ylabel("RSS (MiB)")
    axes.set_title("P4: resident memory against held streams")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(DOCS / "bench-p4-memory.png", dpi=110)
    plt.close(figure)


def main() -> None:
    resume, held = load("p3_resume"), load("p4_held")
    if resume is not None:
        plot_resume(resume)
        print("wrote docs/bench-p3-resume.png")
    if held is not None and "rss_samples" in held:
        plot_memory(held)
        print("wrote docs/bench-p4-memory.png")


if __name__ == "__main__":
    main()
