"""The DSMD training recipe: one loop for one process and for ``torchrun``'s many.

Read top to bottom: :func:`train` resolves the run folder (a new run, or ``--resume``), joins
the process group and calls :func:`~dsmd.training.setup.setup`, which returns a
:class:`~dsmd.training.setup.Run`; :func:`fit` is the loop. Per optimiser step
(:class:`~dsmd.training.step.DistillationStep`) the student encodes this rank's part of the
step's pairs, which arrive carrying the teacher's features; features are gathered from all
ranks, so the DSMD losses, the queue and the balancer see the whole global batch; AdamW steps.
Which pairs form each batch does not depend on the number of processes
(:mod:`dsmd.training.sampling`). Per epoch: validation RSUM on rank 0, a checkpoint
(``last.pt``, and ``best.pt`` when RSUM improves; with ``train.ema_decay`` both are scored and
saved as the moving average of the weights, :mod:`dsmd.training.weight_average`); every ``checkpoint_every`` steps also a
mid-epoch ``last.pt``. Files: :mod:`dsmd.training.run_files`. The other ranks wait at a
barrier during validation, so ``train.dist_timeout_s`` must exceed a validation pass.

Under ``torchrun`` the result is that of one process with the same global batch, up to
float rounding, with two exceptions: dropout masks are drawn per rank, and BatchNorm layers
(EfficientNet) normalise with each rank's own batch statistics, as in any DDP run. With
``data.streaming`` each rank reads its own shards (not batch-exact with one process).

Only one process writes a run folder: ``train`` holds its lock (:mod:`dsmd.runtime.lock`; rank 0
under torchrun) from before it writes anything to the end, and a second ``dsmd train`` on the
folder is refused at once. SIGTERM (:mod:`dsmd.runtime.signals`) lets the optimiser step in
progress complete, writes a checkpoint of that step, and stops with :class:`Stopped` (exit status
143) and the ``--resume`` command; under torchrun the ranks agree on that step (one all-reduce of
a "stop" flag per step), so they all stop after the same one. Ctrl-C stops at once (exit status
130), keeping the last checkpoint. Either way ``--resume`` ends with the uninterrupted run's files.

Resuming restores model, optimiser, queue, balancer and gradient scaler, and the position in
the epoch as a number of pairs of that epoch's order already trained on: nothing in the
checkpoint depends on the number of processes, so a run may resume on another world size.
Randomness is re-derived from the seed rather than saved: the per-pair augmentation from
(seed, epoch, pair) and the dropout masks of each micro-batch from (seed, step, micro-batch,
rank), so a run resumed on the same world size repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dsmd.config import RunConfig, config_to_dict, with_overrides
from dsmd.errors import DsmdError
from dsmd.evaluation.student_eval import evaluate_student
from dsmd.runtime.distributed import Distributed, init_distributed
from dsmd.runtime.files import check_writable
from dsmd.runtime.lock import FolderInUse, exclusive_folder
from dsmd.runtime.signals import Stopped, Terminated, deferred_sigterm, signal_of, stopped_word
from dsmd.training.batches import epoch_micro_batches, optimizer_steps, spare_batch, synchronised
from dsmd.training.checkpoint import checkpoint_config, load_checkpoint
from dsmd.training.resume_changes import check_resume_changes, config_changes
from dsmd.training.schedule import learning_rate
from dsmd.training.setup import Position, Run, setup
from dsmd.training.step import Diverged
from dsmd.training.unpaired import with_unpaired
from dsmd.training.weight_average import update_average


@dataclass
class TrainResult:
    """What a run produced. ``best_*`` are known on rank 0 (``rank``) only."""

    out_dir: Path
    best_checkpoint: Path
    best_rsum: float
    best_epoch: int
    steps: int
    seconds: float
    rank: int = 0


def resolve_run(cfg: RunConfig, resume: bool, resume_overrides: list[str] | None) -> tuple[RunConfig, dict | None]:
    """The config to train with and, when resuming, the checkpoint to continue from.

    Raises:
        DsmdError: ``resume`` without a checkpoint, a new run in a folder that holds one, or a
            resume override of a setting that may not change (:mod:`dsmd.training.resume_changes`).
    """
    out = Path(cfg.out_dir)
    last = out / "checkpoints" / "last.pt"
    check_writable(out, "out_dir")
    if not resume:
        if last.is_file():
            raise DsmdError(f"{out} already holds a run. Pass --resume to continue it, or choose another out_dir=.")
        return cfg, None
    if not last.is_file():
        raise DsmdError(f"nothing to resume in {out}: no checkpoints/last.pt. Start the run without --resume.")
    state = load_checkpoint(last)
    saved = config_to_dict(checkpoint_config(state))
    saved["out_dir"] = str(out)  # where the run is now, should its folder have moved
    started = with_overrides(saved, [])  # (before the overrides: with_overrides may change the dict it is given)
    resumed = with_overrides(saved, resume_overrides)
    state["resume_changes"] = check_resume_changes(config_changes(started, resumed))
    return resumed, state


def train(
    cfg: RunConfig, resume: bool = False, resume_overrides: list[str] | None = None, progress: bool = True, log=print
) -> TrainResult:
    """Distil the student described by ``cfg`` from the feature store ``cfg.store``.

    Under ``torchrun`` every process calls this; it joins the process group from torchrun's
    environment and leaves it at the end.

    Args:
        cfg: the run's configuration. With ``resume`` only its ``out_dir`` is used: the run
            continues with the config saved in its checkpoint, plus ``resume_overrides``
            (e.g. ``["train.epochs=30"]`` to train longer).
        resume: continue from ``out_dir/checkpoints/last.pt`` (possibly mid-epoch).

    Raises:
        DsmdError: the run folder already holds a run (without ``resume``) or cannot be
            written, the store does not match the data or teacher (or is corrupt), a
            checkpoint does not match, ``batch_size`` does not divide over the processes, the
            precision is not supported, training diverged, a rank died.
        FolderInUse: another process is writing the run folder (a :class:`DsmdError`).
        Stopped: SIGTERM (a checkpoint of the current step written) or Ctrl-C stopped the run.
    """
    cfg, state = resolve_run(cfg, resume, resume_overrides)
    ctx = init_distributed(cfg.train.device, cfg.train.dist_backend, cfg.train.dist_timeout_s)
    ok = False
    try:
        with exclusive_folder(cfg.out_dir, "out_dir", ctx):  # before anything is written
            run = setup(cfg, state, ctx, progress and ctx.is_main, log if ctx.is_main else (lambda *_: None))
            result = fit(run, progress and ctx.is_main)
        ok = True
        return result
    except (Stopped, FolderInUse):
        ok = True  # every rank stops at the same point (refused, or after the same step): they leave together
        raise
    except (KeyboardInterrupt, Terminated) as exc:
        raise stopped_outside_loop(cfg, ctx, signal_of(exc)) from None
    finally:
        ctx.shutdown(clean=ok)


def stopped_outside_loop(cfg: RunConfig, ctx: Distributed, signum: int) -> Stopped:
    """The stop of a run by Ctrl-C, or by SIGTERM before its loop: the last checkpoint stays as it was."""
    out, last = cfg.out_dir, Path(cfg.out_dir) / "checkpoints" / "last.pt"
    if last.is_file():
        then = f"The last checkpoint is {last}; continue with `dsmd train --resume out_dir={out}`."
    else:
        then = "No checkpoint was written yet: run the same command again to start the run."
    error = Stopped(f"{stopped_word(signum)}. {then}", signum)
    error.report = ctx.is_main
    return error


def stop_requested(run: Run) -> bool:
    """Whether SIGTERM arrived (on any rank: the ranks agree, so they all stop after the same step)."""
    return run.ctx.any_rank(run.stop.requested, "agreeing whether to stop")


def terminated(run: Run) -> Stopped:
    """The stop after SIGTERM, once ``last.pt`` holds the run's current step."""
    error = Stopped(
        f"{stopped_word(signal.SIGTERM)} after step {run.stepper.steps}: checkpoint {run.files.last} written; "
        f"continue with `dsmd train --resume out_dir={run.cfg.out_dir}`.",
        signal.SIGTERM,
    )
    error.report = run.ctx.is_main
    return error


def fit(run: Run, progress: bool = True) -> TrainResult:
    """The loop: epochs of optimiser steps, each epoch ending in validation and a checkpoint."""
    t0, tc = time.perf_counter(), run.cfg.train
    total = min(run.steps_per_epoch * tc.epochs, tc.max_steps or 10**18)
    bar = tqdm(total=total, initial=min(run.stepper.steps, total), desc="train", disable=not progress)
    try:
        with deferred_sigterm(run.stop):  # SIGTERM: stop after the step in progress, with a checkpoint
            for epoch in range(run.position.epoch, tc.epochs):
                if reached_max_steps(run):
                    break
                lr = set_learning_rate(run, epoch)
                done, complete = train_epoch(run, epoch, lr, bar)
                end_epoch(run, epoch, done, complete, lr, t0)
    finally:
        bar.close()
        run.files.close()
    return finish(run, time.perf_counter() - t0)


def train_epoch(run: Run, epoch: int, lr: float, bar: tqdm) -> tuple[int, bool]:
    """The optimiser steps of ``epoch`` (from where a resumed run stopped).

    Returns:
        ``(steps done in the epoch, whether the epoch is complete)``; it is not when
        ``train.max_steps`` stopped it first.
    """
    tc = run.cfg.train
    done = run.position.epoch_steps if epoch == run.position.epoch else 0
    for step in optimizer_steps(epoch_batches(run, epoch, done), tc.grad_accum_steps):
        try:
            record = run.stepper(step)
        except Diverged as exc:
            raise diverged(run, exc) from None
        update_average(run.average, run.student)
        done += 1
        run.files.step({"step": run.stepper.steps, "epoch": epoch, "lr": lr, **record})
        bar.update(1)
        bar.set_postfix(loss=f"{record['total']:.4f}", epoch=epoch, refresh=False)
        if reached_max_steps(run):
            return done, done >= run.steps_per_epoch  # (a stop is honoured after end_epoch's checkpoint)
        if stop_requested(run):
            run.files.checkpoint(run.state(Position(epoch, done)), best=False)
            run.ctx.barrier("waiting for rank 0's checkpoint")
            raise terminated(run)
        if tc.checkpoint_every and run.stepper.steps % tc.checkpoint_every == 0 and done < run.steps_per_epoch:
            run.files.checkpoint(run.state(Position(epoch, done)), best=False)
            run.ctx.barrier("waiting for rank 0's checkpoint")
    return done, True


def diverged(run: Run, exc: Diverged) -> DsmdError:
    """The one line for a run that diverged: nothing of the diverged step is saved; ``--resume``
    is offered only when a checkpoint exists to resume from."""
    fix = "Lower train.lr (or train.head_lr_scale), or use train.precision=fp32"
    if run.files.last.is_file():
        fix += f"; `dsmd train --resume out_dir={run.cfg.out_dir}` continues from the last checkpoint (written before)"
    else:
        fix += ", and start again: no checkpoint was written before it diverged"
    return DsmdError(f"{exc} {fix}.")


def reached_max_steps(run: Run) -> bool:
    return run.cfg.train.max_steps is not None and run.stepper.steps >= run.cfg.train.max_steps


def set_learning_rate(run: Run, epoch: int) -> float:
    """The paper's step schedule for ``epoch``, applied to both parameter groups."""
    tc = run.cfg.train
    lr = learning_rate(tc.lr, epoch, tc.lr_decay_epochs, tc.lr_decay)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    return lr


def epoch_batches(run: Run, epoch: int, done: int):
    """This rank's micro-batches of ``epoch`` after ``done`` optimiser steps, padded across ranks
    (each with its unpaired items, with ``u_*`` losses)."""
    tc = run.cfg.train
    micro_batches = epoch_micro_batches(
        run.pairs, run.collate, run.micro, tc.seed, epoch, done * tc.grad_accum_steps, run.ctx, run.cfg.data.num_workers
    )
    run.student.train()
    batches = synchronised(micro_batches, run.ctx, spare_batch(run.pairs, run.collate, tc.seed, epoch))
    if run.unpaired is None:
        return batches
    return with_unpaired(batches, run.unpaired.epoch_batches(epoch, done * tc.grad_accum_steps, run.ctx))


def end_epoch(run: Run, epoch: int, done: int, complete: bool, lr: float, t0: float) -> None:
    """Validate on rank 0 and checkpoint (``best.pt`` too when val RSUM improved)."""
    if complete:
        run.balancer.end_epoch()
    if run.ctx.is_main:
        run.files.flush()
        run.val_metrics = evaluate_student(
            run.evaluated, run.data["val"], run.cfg.train.eval_batch_size, run.ctx.device, run.val_cache
        )
        improved = run.val_metrics["rsum"] > run.best.rsum
        if improved:
            run.best.rsum, run.best.epoch = run.val_metrics["rsum"], epoch + 1
        run.files.epoch(
            {
                "step": run.stepper.steps,
                "epoch": epoch + 1,
                "lr": lr,
                **({} if complete else {"epoch_steps": done}),
                **{f"val_{k}": v for k, v in run.val_metrics.items()},
            }
        )
        run.files.checkpoint(run.state(Position(epoch + 1, 0) if complete else Position(epoch, done)), best=improved)
        run.log(
            f"epoch {epoch + 1}/{run.cfg.train.epochs}: val RSUM {run.val_metrics['rsum']:.1f}"
            f" (best {run.best.rsum:.1f} @ {run.best.epoch}), {time.perf_counter() - t0:.0f}s"
        )
    run.ctx.barrier("waiting for rank 0's validation and checkpoint")
    if stop_requested(run):
        raise terminated(run)


def finish(run: Run, seconds: float) -> TrainResult:
    """Write ``result.json`` and say what the run produced."""
    result = TrainResult(
        Path(run.cfg.out_dir), run.files.best, run.best.rsum, run.best.epoch, run.stepper.steps, seconds, run.ctx.rank
    )
    run.files.result(
        {
            "best_checkpoint": str(run.files.best),
            "best_val_rsum": run.best.rsum,
            "best_epoch": run.best.epoch,
            "steps": run.stepper.steps,
            "seconds": round(seconds, 1),
        }
    )
    return result
