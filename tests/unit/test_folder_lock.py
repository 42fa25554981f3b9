"""One owner per folder: a second holder is refused with the first one's pid, and a killed holder
frees the folder at once."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_until
from worker.folder_lock import FolderBusy, hold_folder


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    code = ("import sys, time; from pathlib import Path; from worker.folder_lock import hold_folder; "
            f"lock = hold_folder(Path({str(tmp_path)!r}), 'comfy.work_dir'); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as info:
            hold_folder(tmp_path, "comfy.work_dir")
        assert str(info.value) == (f"comfy.work_dir {tmp_path} is in use by another process (pid {holder.pid}); "
                                   "give each supervisor its own comfy.work_dir and state_dir")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

        def takes() -> bool:
            try:
                hold_folder(tmp_path, "comfy.work_dir").release()
                return True
            except FolderBusy:
                return False
        wait_until(takes, 10, 0.05, "the folder free after its holder died")
    finally:
        holder.kill()
        holder.wait(10)


def test_release_frees_it_within_one_process(tmp_path):
    lock = hold_folder(tmp_path / "new", "state_dir")
    assert (tmp_path / "new" / ".owner.lock").read_text().strip().isdigit()
    lock.release()
    hold_folder(tmp_path / "new", "state_dir").release()
