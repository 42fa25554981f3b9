"""``import pynvml`` -> the simulated NVML binding (``worker.sim.nvml``), for tests and demos without a GPU.

Put this folder first on ``PYTHONPATH`` (``PYTHONPATH=<repo>/worker/sim/pynvml_shim:<repo>``) and every
process that does ``import pynvml`` gets the simulator instead of nvidia-ml-py. The module object itself is
``worker.sim.nvml``, so code that imports either name shares one library state.
"""
import os
import sys

try:
    import worker.sim.nvml as _sim
except ImportError:  # only the shim folder is on the path: add the repository root it lives in
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    import worker.sim.nvml as _sim

from worker.sim.nvml import *  # noqa: E402,F401,F403  (the names, should anything hold this module object)

sys.modules[__name__] = _sim
