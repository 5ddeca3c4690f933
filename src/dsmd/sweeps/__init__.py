"""Sweeps: many runs of one base config (a grid, or named variants, times seeds), one table.

:func:`~dsmd.sweeps.spec.load_sweep` reads and checks a sweep file,
:func:`~dsmd.sweeps.runner.run_sweep` runs it (resumable, several runs at a time) and
:func:`~dsmd.sweeps.table.write_table` writes the mean ± std table and plots.
"""

from dsmd.sweeps.runner import print_commands, run_sweep
from dsmd.sweeps.spec import Sweep, load_sweep
from dsmd.sweeps.table import write_table

__all__ = ["Sweep", "load_sweep", "print_commands", "run_sweep", "write_table"]
