"""What CUDA shows the simulated ComfyUI: the GPUs of the simulated NVML, filtered by ``CUDA_VISIBLE_DEVICES``.

The boards are the ones ``SIM_NVML_GPUS`` configures (:mod:`worker.sim.nvml`; no driver = no GPU). CUDA's rules,
as documented and as captured (``shared/nvml/README.md``, ``comfyui-protocol/gpu/``):

- unset: every GPU, enumerated fastest first (``CUDA_DEVICE_ORDER=FASTEST_FIRST``, the default) or in PCI order
  (``CUDA_DEVICE_ORDER=PCI_BUS_ID``), the order the indexes below refer to;
- a comma list of indexes and/or UUIDs (``GPU-...``, a unique prefix is enough): those devices in that order;
  the first entry that names nothing (an index out of range, an unknown UUID) ends the list there;
- empty: no GPU.

Device 0 of that list is ``cuda:0``, the GPU ComfyUI runs on.
"""
from __future__ import annotations

from worker.sim import nvml
from worker.sim.nvml import SimGpu

# CUDA's context plus ComfyUI's allocator while idle, as captured: vram_free = NVML free - this.
IDLE_CONTEXT_BYTES = 552402944

NO_GPU_TRACEBACK = """Traceback (most recent call last):
  File "<comfyui>/main.py", line 149, in <module>
    import execution
  File "<comfyui>/execution.py", line 15, in <module>
    import comfy.model_management
  File "<comfyui>/comfy/model_management.py", line 237, in <module>
    total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)
                                  ^^^^^^^^^^^^^^^^^^
  File "<comfyui>/comfy/model_management.py", line 187, in get_torch_device
    return torch.device(torch.cuda.current_device())
                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<venv>/lib/python3.12/site-packages/torch/cuda/__init__.py", line 1148, in current_device
    _lazy_init()
  File "<venv>/lib/python3.12/site-packages/torch/cuda/__init__.py", line 478, in _lazy_init
    torch._C._cuda_init()
RuntimeError: No CUDA GPUs are available"""

# A board that is present but broken: torch's first real CUDA call on it fails (not captured; torch's format).
CUDA_FAILURE_TRACEBACK = """Traceback (most recent call last):
  File "<comfyui>/main.py", line 149, in <module>
    import execution
  File "<comfyui>/execution.py", line 15, in <module>
    import comfy.model_management
  File "<comfyui>/comfy/model_management.py", line 237, in <module>
    total_vram = get_total_memory(get_torch_device()) / (1024 * 1024)
                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<comfyui>/comfy/model_management.py", line 209, in get_total_memory
    _, mem_total_cuda = torch.cuda.mem_get_info(dev)
                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<venv>/lib/python3.12/site-packages/torch/cuda/memory.py", line 836, in mem_get_info
    return torch.cuda.cudart().cudaMemGetInfo(device)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
RuntimeError: CUDA error: unspecified launch failure
CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be incorrect.
For debugging consider passing CUDA_LAUNCH_BLOCKING=1
Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.
"""


def cuda_order(gpus: list[SimGpu], device_order: str | None) -> list[SimGpu]:
    """CUDA's enumeration: PCI order with ``PCI_BUS_ID``, else fastest first (newest compute capability,
    then SMs x clock; ties keep PCI order). Identical boards therefore always enumerate in PCI order."""
    if (device_order or "").strip().upper() == "PCI_BUS_ID":
        return list(gpus)
    return sorted(gpus, key=lambda g: (g.model.compute_capability,
                                       g.model.sm_count * g.model.max_clocks[nvml.NVML_CLOCK_SM]), reverse=True)


def visible_devices(gpus: list[SimGpu], cuda_visible_devices: str | None,
                    device_order: str | None = None) -> list[SimGpu]:
    """The devices a CUDA process sees, ``cuda:0`` first."""
    ordered = cuda_order(gpus, device_order)
    if cuda_visible_devices is None:
        return ordered
    visible: list[SimGpu] = []
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        found = _lookup(ordered, entry)
        if found is None or found in visible:
            break
        visible.append(found)
    return visible


def _lookup(ordered: list[SimGpu], entry: str) -> SimGpu | None:
    if entry.isdigit():
        index = int(entry)
        return ordered[index] if index < len(ordered) else None
    if entry.upper().startswith("GPU-") and len(entry) > 4:
        matches = [g for g in ordered if g.uuid.lower().startswith(entry.lower())]
        return matches[0] if len(matches) == 1 else None
    return None


def device_label(gpu: SimGpu) -> str:
    """ComfyUI's name of its device: ``cuda:0 NVIDIA H200 : cudaMallocAsync``."""
    return f"cuda:0 {gpu.name} : cudaMallocAsync"


def device_stats(gpu: SimGpu) -> dict:
    """The ``/system_stats`` device entry, memory as CUDA sees it now (follows ``SIM_NVML_STATE``)."""
    _total, _used, free = nvml.sim_memory(gpu)
    return {"name": device_label(gpu), "type": "cuda", "index": 0, "vram_total": gpu.cuda_total,
            "vram_free": max(0, free - IDLE_CONTEXT_BYTES), "torch_vram_total": 0, "torch_vram_free": 0}
