"""The ground floor: devices, the process group, files written atomically, pretrained weights.

Nothing here imports another dsmd package (except :mod:`dsmd.errors`); everything else may
import from here.
"""
