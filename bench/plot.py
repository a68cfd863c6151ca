"""
The picture of ``bench/run.py --scaling --plot FILE.png``: how cost grows.

Three panels, one line a system: tasks a second and round trip p50 against
the pools' size (1 to 8 workers on this machine's cores), and echo speed
against the payload's size (1 KiB to 128 MiB, log scales). It needs
matplotlib (``pip install "procpool[plot]"``); the figures are kept beside
the picture as JSON (``FILE.json``), so ``python bench/plot.py FILE.json``
draws it again without running the bench.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["draw", "figures_path"]

MiB = 1024 * 1024

# procpool first and bold; the peers in the order bench/run.py knows them.
_STYLE = {"procpool": {"linewidth": 2.6, "zorder": 5}}


def figures_path(picture: str) -> str:
    """Where the figures behind ``picture`` are kept: the same name, ``.json``."""
    return os.path.splitext(picture)[0] + ".json"


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // 1024} KiB"


def draw(figures: dict[str, Any], picture: str, note: str = "", keep: bool = True) -> None:
    """
    Draw ``figures`` into ``picture`` (PNG) and, with ``keep``, keep them in
    its ``.json``.

    ``figures`` is ``{"workers": {system: {"n": {"rt_p50_us": .., "burst_per_s":
    ..}}}, "echo": {system: {"size": mib_per_s}}}``, the counts and sizes as
    strings (as JSON keeps them); a figure that failed (None) is left out of
    its line. Raises SystemExit with a clear message when matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench: --plot needs matplotlib: pip install 'procpool[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot

    if keep:
        with open(figures_path(picture), "w") as out:
            json.dump({"note": note, **figures}, out, indent=1)
    fig, (tasks, trip, echo) = pyplot.subplots(1, 3, figsize=(15, 4.6))
    for name, by_workers in figures.get("workers", {}).items():
        counts = sorted(int(n) for n in by_workers)
        style = _STYLE.get(name, {"linewidth": 1.4})
        for axes, key in ((tasks, "burst_per_s"), (trip, "rt_p50_us")):
            points = [(n, by_workers[str(n)][key]) for n in counts
                      if by_workers[str(n)].get(key) is not None]
            if points:
                axes.plot([n for n, _ in points], [v for _, v in points], marker="o",
                          label=name, **style)
    for name, by_size in figures.get("echo", {}).items():
        sizes = sorted(int(n) for n in by_size)
        points = [(n, by_size[str(n)]) for n in sizes if by_size[str(n)] is not None]
        if points:
            echo.plot([n for n, _ in points], [v for _, v in points], marker="o", label=name,
                      **_STYLE.get(name, {"linewidth": 1.4}))
    tasks.set(title="20,000 no-ops", xlabel="workers", ylabel="tasks per second")
    trip.set(title="round trip p50", xlabel="workers", ylabel="microseconds", yscale="log")
    echo.set(title="echo (2 workers)", xlabel="payload", ylabel="MiB per second",
             xscale="log", yscale="log")
    sizes = sorted({int(n) for by_size in figures.get("echo", {}).values() for n in by_size})
    if sizes:
        echo.set_xticks(sizes, [_size(n) for n in sizes])
    for axes in (tasks, trip, echo):
        axes.grid(True, alpha=0.3)
    tasks.set_xticks(sorted({int(n) for w in figures.get("workers", {}).values() for n in w}))
    trip.set_xticks(tasks.get_xticks())
    handles, labels = tasks.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize="small")
    if note:
        fig.suptitle(note, fontsize="medium")
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    fig.savefig(picture, dpi=110)
    pyplot.close(fig)


def main() -> None:
    """``python bench/plot.py FILE.json [FILE.png]``: draw kept figures again."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python bench/plot.py FILE.json [FILE.png]")
    try:
        with open(sys.argv[1]) as kept:
            figures = json.load(kept)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench: cannot read the kept figures {sys.argv[1]!r}: {exc}") from None
    if not isinstance(figures, dict) or not {"workers", "echo"} & set(figures):
        raise SystemExit(f"bench: {sys.argv[1]!r} holds no figures of bench/run.py --scaling")
    picture = sys.argv[2] if len(sys.argv) > 2 else os.path.splitext(sys.argv[1])[0] + ".png"
    draw({k: v for k, v in figures.items() if k != "note"}, picture, figures.get("note", ""),
         keep=False)  # the kept figures stay as they are
    print(f"bench: drew {picture}")


if __name__ == "__main__":
    main()
