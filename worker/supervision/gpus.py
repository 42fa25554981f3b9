"""GPU discovery through NVML (``import pynvml``, from nvidia-ml-py). "No GPU" is a normal answer.

The module is imported lazily, so a test can put a simulated ``pynvml`` first on ``PYTHONPATH``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total: int


@dataclass(frozen=True)
class Discovery:
    gpus: tuple[Gpu, ...]
    problem: str = ""        # why none were found, for one clear log line
    no_driver: bool = True   # False: a driver is there but failed (not loaded yet, GPU lost...): retry later


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def discover() -> Discovery:
    """Every GPU NVML lists (PCI order), or none with the reason."""
    try:
        import pynvml
    except ImportError:
        return Discovery((), "the NVML binding (nvidia-ml-py) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
            return Discovery((), f"NVML is not available ({exc}): no NVIDIA driver on this machine")
        return Discovery((), f"NVML failed to start ({type(exc).__name__}: {exc})", no_driver=False)
    try:
        count = pynvml.nvmlDeviceGetCount()
        found = []
        for index in range(count):
            try:
                found.append(_read_gpu(pynvml, index))
            except pynvml.NVMLError as exc:      # one bad GPU must not hide the healthy ones
                log.error("GPU %d: NVML cannot read it (%s); it gets no slot", index, exc)
        if not found and count:
            return Discovery((), "NVML could not read any GPU", no_driver=False)
        return Discovery(tuple(found), "" if found else "NVML lists no GPU on this machine")
    except pynvml.NVMLError as exc:
        return Discovery((), f"NVML failed while listing GPUs ({exc})", no_driver=False)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _read_gpu(pynvml, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    return Gpu(index=index, uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
               name=_text(pynvml.nvmlDeviceGetName(handle)),
               memory_total=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total))


def _matches(gpu: Gpu, item: str) -> bool:
    return item == str(gpu.index) or item.lower() == gpu.uuid.lower()


def select(found: tuple[Gpu, ...], wanted: str | tuple[str, ...], exclude: tuple[str, ...] = ()) -> tuple[Gpu, ...]:
    """Apply ``gpus: all | none | [index or UUID, ...]`` and ``gpus_exclude`` (pure; PCI order kept)."""
    if wanted == "none":
        return ()
    if wanted == "all":
        chosen = list(found)
    else:
        chosen = []
        for item in wanted:
            match = [g for g in found if _matches(g, item)]
            if not match:
                log.warning("gpus: %s matches no GPU NVML lists; skipped", item)
            chosen.extend(g for g in match if g not in chosen)
    for item in exclude:
        if not any(_matches(g, item) for g in found):
            log.warning("gpus_exclude: %s matches no GPU NVML lists", item)
    return tuple(g for g in chosen if not any(_matches(g, item) for item in exclude))
