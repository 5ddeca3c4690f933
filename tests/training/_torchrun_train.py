"""``dsmd ...`` under torchrun, with test-only probes and faults (used by test_distributed.py).

    python -m torch.distributed.run ... _torchrun_train.py [OPTIONS] -- train --quiet key=value ...

Options (none of this exists in dsmd itself; it patches from outside):

- ``--grads PATH``: rank 0 saves the gradients it steps on at the first optimiser step
  (after DDP's all-reduce), as a list in the optimiser's parameter order.
- ``--die-after K`` / ``--hang-after K``: rank ``--fault-rank`` (default 1) exits with status
  17 / sleeps for an hour after its K-th optimiser step.
- ``--kill-after-checkpoint K``: right after rank 0 writes a mid-epoch checkpoint at step K,
  every process of the run (all ranks and the torchrun agent) is killed with SIGKILL.
- ``--pid-dir DIR``: where each rank writes its pid (needed by ``--kill-after-checkpoint``).
- ``--term-agent-after K``: after optimiser step K, rank 0 sends SIGTERM to the torchrun agent
  and waits until the agent has passed it on to rank 0 itself (the other ranks get it too).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grads")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--hang-after", type=int)
    parser.add_argument("--fault-rank", type=int, default=1)
    parser.add_argument("--kill-after-checkpoint", type=int)
    parser.add_argument("--pid-dir")
    parser.add_argument("--term-agent-after", type=int)
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    rank = int(os.environ.get("RANK", 0))
    if args.pid_dir:
        Path(args.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.pid_dir) / f"rank{rank}.pid").write_text(str(os.getpid()))

    real_step = torch.optim.AdamW.step
    calls = [0]

    def step(self, *a, **k):
        calls[0] += 1
        if args.grads and calls[0] == 1 and rank == 0:
            torch.save([p.grad.clone() for group in self.param_groups for p in group["params"]], args.grads)
        out = real_step(self, *a, **k)
        if rank == args.fault_rank and calls[0] == args.die_after:
            os._exit(17)
        if rank == args.fault_rank and calls[0] == args.hang_after:
            # Hung as in a collective that never returns, where Python's deferred SIGTERM handler
            # cannot run and torchrun ends the rank with SIGKILL after its shutdown timeout (30 s):
            # dying at torchrun's SIGTERM spares the test that wait.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(3600)
        return out

    torch.optim.AdamW.step = step

    import dsmd.training.run_files as loop

    real_save = loop.save_checkpoint

    def save(path, state):
        real_save(path, state)
        if state["step"] == args.kill_after_checkpoint and state.get("epoch_pairs"):
            pids = [int(p.read_text()) for p in Path(args.pid_dir).glob("rank*.pid")]
            for pid in [*pids, os.getppid()]:  # the other ranks, the torchrun agent
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    loop.save_checkpoint = save

    import dsmd.training.recipe as recipe

    real_stop_requested = recipe.stop_requested

    def stop_requested(run):
        if rank == 0 and run.stepper.steps == args.term_agent_after and not run.stop.requested:
            os.kill(os.getppid(), signal.SIGTERM)  # the agent passes SIGTERM on to every rank
            while not run.stop.requested:
                time.sleep(0.01)
        return real_stop_requested(run)

    recipe.stop_requested = stop_requested

    from dsmd.cli import main as dsmd_main

    sys.argv = ["dsmd", *rest]
    dsmd_main(rest)


if __name__ == "__main__":
    main()
