"""Pictures of the benchmarks' results files (`benchmarks/results/NAME.json`), drawn with matplotlib.

`make bench` draws them beside the JSON files; `make docs` draws them again from the same files, so a picture
never disagrees with its numbers."""

from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _table(results: dict, table_id: str) -> dict | None:
    return next((t for t in results.get("tables", []) if t.get("id") == table_id), None)


def _column(table: dict, name: str) -> int:
    return table["columns"].index(name)


def _png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def time_to_quality(results: dict) -> bytes | None:
    """NDCG@10 against fit time for every row of the peers' ml-100k means: up and to the left is better."""
    table = _table(results, "ml-100k-mean")
    if table is None:
        return None
    x, y = _column(table, "fit, mean (s)"), _column(table, "NDCG@10")
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in table["rows"]:
        ax.scatter(max(row[x], 0.01), row[y], s=40)
        ax.annotate(row[0], (max(row[x], 0.01), row[y]), textcoords="offset points", xytext=(6, -3), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("fit time, mean of the folds (s, log scale)")
    ax.set_ylabel("NDCG@10, mean of the folds")
    ax.set_title("ml-100k u1–u5: quality against fit time")
    ax.grid(alpha=0.3)
    return _png(fig)


def step_parts(results: dict) -> bytes | None:
    """Where a training step's time goes, part by part, for the rating and retrieval steps (stacked bars)."""
    table = _table(results, "parts")
    if table is None:
        return None
    parts = [c for c in table["columns"][1:] if c not in ("total", "samples/s")]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    for i, row in enumerate(table["rows"]):
        left = 0.0
        for part in parts:
            value = row[_column(table, part)]
            ax.barh(i, value, left=left, color=f"C{parts.index(part)}", label=part if i == 0 else None)
            left += value
    ax.set_yticks(range(len(table["rows"])), [row[0] for row in table["rows"]])
    ax.invert_yaxis()
    ax.set_xlabel("µs per step of 256")
    ax.legend(ncols=len(parts), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return _png(fig)


def serving_latency(results: dict) -> bytes | None:
    """The served top-10 latency, p50 and p99, beside their targets."""
    table = _table(results, "serving")
    if table is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 2.6))
    labels = [row[0] for row in table["rows"]]
    for j, name in enumerate(("p50 (ms)", "p99 (ms)")):
        col = _column(table, name)
        ax.barh([i + 0.4 * j for i in range(len(labels))], [row[col] for row in table["rows"]], height=0.4,
                label=name)  # fmt: skip
    ax.set_yticks([i + 0.2 for i in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms)")
    ax.legend(fontsize=8)
    return _png(fig)


# results file name -> (picture name, how it is drawn)
CHARTS: dict[str, list[tuple[str, Callable[[dict], bytes | None]]]] = {
    "peers": [("time-to-quality.png", time_to_quality)],
    "run": [("step-parts.png", step_parts)],
    "step_parts": [("retrieval-step-parts.png", step_parts)],
    "topn_serve": [("serving-latency.png", serving_latency)],
}


def draw(name: str, results: dict) -> dict[str, bytes]:
    """The PNG pictures of one results file, by file name (none for a file without pictures)."""
    out = {}
    for filename, fn in CHARTS.get(name, []):
        png = fn(results)
        if png is not None:
            out[filename] = png
    return out
