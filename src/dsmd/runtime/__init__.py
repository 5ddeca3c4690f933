"""The ground floor: devices, the process group, files written atomically, pretrained weights,
folder locks (one writer per output folder) and signals (how a command stops).

Nothing here imports another dsmd package (except :mod:`dsmd.errors`); everything else may
import from here.
"""
