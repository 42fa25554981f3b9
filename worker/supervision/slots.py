"""Which slots this box runs: one per GPU, one CPU slot, or one per attached ComfyUI address."""
from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable, Iterable

from worker.config import Config, ConfigError, comfy_base_url
from worker.supervision import gpus as gpu_discovery
from worker.supervision.children import SlotPlan

log = logging.getLogger(__name__)


class GpuUnavailable(RuntimeError):
    """A driver is there but NVML failed: a runtime fault (retry later), not a configuration one."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (we can bind it right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def assign_ports(count: int, base: int, is_free: Callable[[int], bool],
                 reserved: Iterable[int] = ()) -> list[int]:
    """``count`` ports from ``base`` upwards, skipping taken and reserved ones (pure given is_free)."""
    taken = set(reserved)
    ports: list[int] = []
    port = base
    while len(ports) < count:
        if port > 65535:
            raise ConfigError(f"comfy.base_port: no free port left above {base}")
        if port not in taken and is_free(port):
            ports.append(port)
        elif port not in taken:
            log.warning("Port %d is already taken; skipping it", port)
        port += 1
    return ports


def plan_slots(config: Config, is_free: Callable[[int], bool] = port_is_free) -> list[SlotPlan]:
    """The slots to run; raises ConfigError when there is nothing to run on."""
    if config.comfy.mode == "attach":
        return [SlotPlan(f"slot{i}", f"ComfyUI at {comfy_base_url(a)}", 0, attach_url=comfy_base_url(a))
                for i, a in enumerate(config.comfy.attach)]
    found = gpu_discovery.Discovery((), "gpus: none") if config.gpus == "none" else gpu_discovery.discover()
    if not found.gpus and not found.no_driver:
        raise GpuUnavailable(f"GPUs: {found.problem}; not falling back to the CPU for a driver fault "
                             "(exit 1, so a service manager retries)")
    chosen = gpu_discovery.select(found.gpus, config.gpus, config.gpus_exclude)
    if found.gpus and not chosen:
        listed = ", ".join(f"{g.index} ({g.uuid})" for g in found.gpus)
        raise ConfigError(f"gpus: {config.gpus if config.gpus == 'all' else list(config.gpus)} minus "
                          f"gpus_exclude {list(config.gpus_exclude)} leaves no GPU; NVML lists {listed}")
    if chosen:
        ports = assign_ports(len(chosen), config.comfy.base_port, is_free)
        for gpu, port in zip(chosen, ports):
            log.info("GPU %d: %s (%s) -> ComfyUI on port %d", gpu.index, gpu.name, gpu.uuid, port)
        return [SlotPlan(f"gpu{g.index}", f"GPU {g.index}", port, g.uuid) for g, port in zip(chosen, ports)]
    reason = found.problem or "no GPU matches the gpus setting"
    if not config.cpu_fallback:
        raise ConfigError(f"gpus: nothing to run on ({reason}) and cpu_fallback is false")
    log.warning("No GPU to use (%s): running one CPU slot (ComfyUI --cpu)", reason)
    return [SlotPlan("cpu", "the CPU slot", assign_ports(1, config.comfy.base_port, is_free)[0])]
