"""Exit codes shared by the supervisor and its children: they are a protocol, not just numbers."""
from __future__ import annotations

import signal

EXIT_OK = 0          # clean stop (drained, or the demo delivered every job)
EXIT_FAILURE = 1     # something failed at run time; a supervisor may restart it
EXIT_CONFIG = 2      # bad configuration: restarting cannot help (systemd: RestartPreventExitStatus=2)
EXIT_BOOT = 3        # a child could not start (e.g. its ComfyUI never became ready)

NAMES = {EXIT_OK: "ok", EXIT_FAILURE: "failure", EXIT_CONFIG: "config error", EXIT_BOOT: "boot error"}


def describe_status(code: int | None) -> str:
    """A Popen/Process exit status -> "exit code 1" or "signal 9 (SIGKILL)"."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
