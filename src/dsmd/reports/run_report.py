"""``dsmd report RUN_DIR``: the run's plots, then its student measured against the teacher.

Adds to ``RUN/report.md`` (after :func:`dsmd.reports.run_plots.plot_run`) the efficiency table
of the best checkpoint (:func:`dsmd.reports.efficiency.measure_efficiency`: parameters, latency
at batch 1 and 32, throughput, peak memory; also saved as ``RUN/efficiency.json``) and the
feature-space figure of the test split (:func:`dsmd.reports.feature_space.plot_feature_space`,
``RUN/plots/feature_space.png``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dsmd.errors import DsmdError
from dsmd.reports.efficiency import format_efficiency, measure_efficiency
from dsmd.reports.feature_space import plot_feature_space
from dsmd.reports.run_plots import plot_run
from dsmd.runtime.files import write_text_atomic


def report_run(
    run_dir: str | Path, measure: bool = True, device: str = "cpu", log: Callable[[str], None] = print
) -> list[Path]:
    """Plots of the run and, with ``measure``, its efficiency table and feature-space figure.

    Returns:
        The PNG files written.

    Raises:
        DsmdError: not a training run folder; with ``measure``, a run without
            ``checkpoints/best.pt`` or whose store is missing (the message names the fix).
    """
    run = Path(run_dir)
    plots = plot_run(run)
    if not measure:
        return plots
    best = run / "checkpoints" / "best.pt"
    if not best.is_file():
        raise DsmdError(f"{best} not found: the run has no best checkpoint yet. Pass --no-measure for the plots only.")
    log("measuring the student and the teacher (dsmd efficiency) ...")
    efficiency = measure_efficiency(best, device=device)
    write_text_atomic(run / "efficiency.json", json.dumps(efficiency, indent=2) + "\n")
    log("drawing the feature spaces (dsmd plot-space) ...")
    space_png = run / "plots" / "feature_space.png"
    space = plot_feature_space(best, split="test", out=space_png, device=device)
    text = (run / "report.md").read_text(encoding="utf-8")
    text += "\n## Efficiency (best checkpoint)\n\n" + format_efficiency(efficiency) + "\n"
    text += (
        "\n## Feature spaces (test split)\n\n"
        f"![feature_space](plots/{space_png.name})\n\n"
        f"The teacher's and the student's features after one PCA fitted on the teacher's "
        f"({space['n_images']} images, {space['n_captions']} captions): the first three components "
        f"explain {100 * space['teacher_explained_variance']:.1f}% of the teacher's variance and "
        f"{100 * space['student_captured_variance']:.1f}% of the student's.\n"
    )
    write_text_atomic(run / "report.md", text)
    return [*plots, space_png]


__all__ = ["report_run"]
