"""Before the supervisor's loop: own the folders, clean up after a crashed run, plan the slots, and
check the journal (migrated or refused; open jobs of slots that are gone moved to live ones)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from worker.config import Config
from worker.folder_lock import FolderLock, hold_folder
from worker.jobs.recovery import adopt_orphans
from worker.journal.store import Journal
from worker.supervision.children import SlotPlan, sweep_leftovers
from worker.supervision.slots import plan_slots

log = logging.getLogger(__name__)


@dataclass
class Box:
    """What the supervisor runs, and the folder locks it holds while it runs."""

    plans: list[SlotPlan]
    locks: list[FolderLock] = field(default_factory=list)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def prepare_box(config: Config) -> Box:
    """Raises FolderBusy (another supervisor owns a folder), ConfigError, GpuUnavailable, JournalError."""
    work_dir = Path(config.comfy.work_dir).resolve()
    locks = [hold_folder(work_dir, "comfy.work_dir")]
    try:
        if config.state_path != work_dir:
            locks.append(hold_folder(config.state_path, "state_dir"))
        sweep_leftovers(config.comfy.work_dir)
        plans = plan_slots(config)
        check_journal(config, [plan.name for plan in plans])
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return Box(plans, locks)


def check_journal(config: Config, live: list[str]) -> None:
    journal = Journal.open(config.state_path)
    try:
        adopt_orphans(journal, live, time.time())
        open_jobs = sum(journal.open_slots().values())
        if open_jobs:
            log.warning("Journal %s: %d job(s) left open by an earlier run; their slots recover them",
                        journal.path, open_jobs)
    finally:
        journal.close()
