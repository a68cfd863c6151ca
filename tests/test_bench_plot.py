"""bench/plot.py: the picture of how cost grows, drawn from the bench's figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
MiB = 1024 * 1024

FIGURES = {
    "workers": {
        "procpool": {"1": {"rt_p50_us": 60, "burst_per_s": 9000},
                     "2": {"rt_p50_us": 64, "burst_per_s": 16000},
                     "4": {"rt_p50_us": 70, "burst_per_s": 15000}},
        "multiprocessing": {"1": {"rt_p50_us": 90, "burst_per_s": 12000},
                            "2": {"rt_p50_us": None, "burst_per_s": 20000},
                            "4": {"rt_p50_us": 120, "burst_per_s": 19000}},
    },
    "echo": {"procpool": {str(1024): 20, str(MiB): 400, str(128 * MiB): 110},
             "multiprocessing": {str(1024): 15, str(MiB): None, str(128 * MiB): 90}},
}


def _png(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_the_figures_are_drawn_and_kept_beside_the_picture(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, BENCH)
    try:
        import plot
    finally:
        sys.path.remove(BENCH)
    picture = str(tmp_path / "scaling.png")
    plot.draw(FIGURES, picture, "2 cores, medians of 3")
    data = _png(picture)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # three panels with lines, not an empty canvas
    with open(plot.figures_path(picture)) as kept:
        saved = json.load(kept)
    assert saved["note"] == "2 cores, medians of 3"
    assert saved["echo"]["procpool"][str(MiB)] == 400

    # Drawn again from the kept figures alone, the same picture comes out.
    again = str(tmp_path / "again.png")
    done = subprocess.run([sys.executable, os.path.join(BENCH, "plot.py"),
                           plot.figures_path(picture), again],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _png(again) == data


def test_plot_without_matplotlib_says_what_to_install(tmp_path):
    # A matplotlib that cannot be imported, first on the path.
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('not here')\n")
    script = (f"import sys; sys.path[:0] = [{str(fake)!r}, {BENCH!r}]\n"
              "import plot\n"
              f"plot.draw({{}}, {str(tmp_path / 'x.png')!r})\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert "pip install 'procpool[plot]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_redraw_from_a_missing_or_foreign_file_says_so(tmp_path):
    foreign = tmp_path / "other.json"
    foreign.write_text('{"name": "not figures"}')
    for path in (str(tmp_path / "missing.json"), str(foreign)):
        done = subprocess.run([sys.executable, os.path.join(BENCH, "plot.py"), path],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert path in done.stderr
        assert "Traceback" not in done.stderr
