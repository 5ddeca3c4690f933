"""Pictures of a training run, from its ``steps.jsonl`` and ``epochs.jsonl`` (``dsmd report RUN_DIR``).

``RUN/plots/losses.png``: each raw loss and the balanced objective by optimiser step (log
scale); ``RUN/plots/balancer.png``: the balancer's weights (and rates) by step;
``RUN/plots/validation.png``: validation RSUM and R@1 by epoch. ``RUN/report.md`` links them
with the run's best result. Drawn with matplotlib (the Agg backend: no display needed).
"""

from __future__ import annotations

from pathlib import Path

from dsmd.errors import DsmdError
from dsmd.runtime.checksums import check_files, seal_holds
from dsmd.runtime.files import atomic_path, read_json, read_json_lines, write_text_atomic

LOSSES = ("cd", "fd", "sd", "hnd")


_FIX = "The run's logs were changed after training: restore them, or train the run again."


def _records(path: Path) -> list[dict]:
    """The records of a run's log (a last line torn by a crash left out; a damaged line refused)."""
    return read_json_lines(path, _FIX) if path.is_file() else []


def _finished(run: Path) -> dict:
    """``result.json`` of a finished run (empty while it runs), with the logs it records checked."""
    path = run / "result.json"
    if not path.is_file():
        return {}
    result = read_json(path, _FIX)
    if ("logs" in result or "sha256" in result) and not seal_holds(result):
        raise DsmdError(f"{path} is damaged (its sha256 differs from its content). {_FIX}")
    if not all(isinstance(result.get(k), int | float) for k in ("best_val_rsum", "best_epoch")):
        raise DsmdError(f"{path} is damaged (no best_val_rsum / best_epoch). {_FIX}")
    logs = result.get("logs", {})
    if not isinstance(logs, dict) or not all(isinstance(r, dict) for r in logs.values()):
        raise DsmdError(f"{path} is damaged (its logs entry is not what dsmd wrote). {_FIX}")
    check_files(run, logs, f"run {run}", _FIX, force=True)
    return result


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_losses(steps: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [
        k
        for k in (*LOSSES, *sorted({k for r in steps for k in r} - set(LOSSES)))
        if any(isinstance(r.get(k), int | float) for r in steps)
        and k not in ("step", "epoch", "lr", "grad_norm", "micro_batches")
        and k[:2] not in ("w_", "r_", "s_")
    ]
    for name in names:
        x, y = _series(steps, name)
        if y and min(y) > 0:
            ax.plot(x, y, label=name, linewidth=2.0 if name == "total" else 1.2)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (raw; total: balanced)")
    ax.set_title("Losses")
    ax.legend(ncol=3, fontsize=8)
    ax.grid(alpha=0.3)
    path = _save(fig, out / "losses.png")
    plt.close(fig)
    return path


def plot_balancer(steps: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    for key in sorted({k for r in steps for k in r if k.startswith("w_")}):
        top.plot(*_series(steps, key), label=key[2:], linewidth=1.2)
        bottom.plot(*_series(steps, "r_" + key[2:]), label=key[2:], linewidth=1.0)
    top.set_ylabel("weight w")
    top.set_title("Balancer")
    top.legend(ncol=4, fontsize=8)
    bottom.set_ylabel("rate r")
    bottom.set_xlabel("optimiser step")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    path = _save(fig, out / "balancer.png")
    plt.close(fig)
    return path


def plot_validation(epochs: list[dict], out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [r["epoch"] for r in epochs if "val_rsum" in r]
    ax.plot(x, [r["val_rsum"] for r in epochs if "val_rsum" in r], marker="o", label="RSUM", color="black")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val RSUM")
    twin = ax.twinx()
    for key, style in (("val_i2t_r1", "--"), ("val_t2i_r1", ":")):
        twin.plot(x, [r.get(key) for r in epochs if "val_rsum" in r], style, label=key[4:])
    twin.set_ylabel("R@1 (%)")
    ax.set_title("Validation")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    path = _save(fig, out / "validation.png")
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots into ``RUN/plots/`` and write ``RUN/report.md``; returns the plots.

    Raises:
        DsmdError: the folder holds no ``steps.jsonl`` (not a training run).
    """
    run = Path(run_dir)
    result = _finished(run)  # (its logs checked against it first)
    steps, epochs = _records(run / "steps.jsonl"), _records(run / "epochs.jsonl")
    if not steps:
        raise DsmdError(
            f"{run} holds no steps.jsonl with a step in it: not a training run folder (dsmd train's out_dir)."
        )
    out = run / "plots"
    out.mkdir(exist_ok=True)
    plots = [plot_losses(steps, out), plot_balancer(steps, out)]
    if any("val_rsum" in r for r in epochs):
        plots.append(plot_validation(epochs, out))
    lines = [
        f"# Training run {run.name}",
        "",
        f"{len(steps)} optimiser steps, {len(epochs)} validations"
        + (f"; best val RSUM {result['best_val_rsum']:.1f} at epoch {result['best_epoch']}" if result else "")
        + ".",
        "",
    ]
    lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
    lines += [
        "",
        "Losses are the raw values before weighting (log scale) and the balanced objective; the balancer "
        "panel shows each loss's weight and rate (see docs/method.md). TensorBoard: "
        f"`tensorboard --logdir {run / 'tensorboard'}`.",
        "",
    ]
    write_text_atomic(run / "report.md", "\n".join(lines))
    return plots
