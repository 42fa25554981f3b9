"""Which slots this box runs: one per GPU, one CPU slot, or one per attached ComfyUI address."""
from __future__ import annotations

import logging

from worker.config import Config, ConfigError, comfy_base_url
from worker.supervision import gpus as gpu_discovery
from worker.supervision.children import SlotPlan

log = logging.getLogger(__name__)


def plan_slots(config: Config) -> list[SlotPlan]:
    """The slots to run; raises ConfigError when there is nothing to run on."""
    if config.comfy.mode == "attach":
        return [SlotPlan(f"slot{i}", f"ComfyUI at {comfy_base_url(a)}", 0, attach_url=comfy_base_url(a))
                for i, a in enumerate(config.comfy.attach)]
    found = gpu_discovery.Discovery((), "gpus: none") if config.gpus == "none" else gpu_discovery.discover()
    chosen = gpu_discovery.select(found.gpus, config.gpus)
    if chosen:
        for gpu in chosen:
            log.info("GPU %d: %s (%s)", gpu.index, gpu.name, gpu.uuid)
        return [SlotPlan(f"gpu{g.index}", f"GPU {g.index}", config.comfy.base_port + i, g.uuid)
                for i, g in enumerate(chosen)]
    reason = found.problem or "no GPU matches the gpus setting"
    if not config.cpu_fallback:
        raise ConfigError(f"gpus: nothing to run on ({reason}) and cpu_fallback is false")
    log.warning("No GPU to use (%s): running one CPU slot (ComfyUI --cpu)", reason)
    return [SlotPlan("cpu", "the CPU slot", config.comfy.base_port)]
