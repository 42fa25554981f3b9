"""The named phases of a claimed job and the moves between them (pure, stdlib only).

::

    claimed ─> inputs_uploaded ─> prompt_queued ─> outputs_stored ─> final_queued ─> delivered
       ^              │                 │                                  │    └──> refused
       └──────────────┴─────────────────┘ (a new attempt)                  └──────> expired
    (any open phase) ─> final_queued          claimed ─> unreportable

``claimed``: the claim answer is on disk. ``inputs_uploaded``: ComfyUI has the input files.
``prompt_queued``: the prompt id, client id and ComfyUI address are on disk (written *before* the
``POST /prompt``). ``outputs_stored``: the outputs are in S3 (or encoded) and their entries on disk.
``final_queued``: the final webhook body is on disk and is being sent (the outbox). The closed phases:
``delivered`` (GmAnimato answered 2xx), ``refused`` (a permanent answer, recorded), ``expired``
(undelivered for ``webhook.expiry``), ``unreportable`` (the claim answer had no usable job id).
"""
from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    CLAIMED = "claimed"
    INPUTS_UPLOADED = "inputs_uploaded"
    PROMPT_QUEUED = "prompt_queued"
    OUTPUTS_STORED = "outputs_stored"
    FINAL_QUEUED = "final_queued"
    DELIVERED = "delivered"
    REFUSED = "refused"
    EXPIRED = "expired"
    UNREPORTABLE = "unreportable"


CLOSED = frozenset({Phase.DELIVERED, Phase.REFUSED, Phase.EXPIRED, Phase.UNREPORTABLE})
RUNNING = frozenset({Phase.CLAIMED, Phase.INPUTS_UPLOADED, Phase.PROMPT_QUEUED})
OPEN = frozenset(Phase) - CLOSED

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.CLAIMED: frozenset({Phase.CLAIMED, Phase.INPUTS_UPLOADED, Phase.PROMPT_QUEUED, Phase.FINAL_QUEUED,
                              Phase.UNREPORTABLE}),
    Phase.INPUTS_UPLOADED: frozenset({Phase.CLAIMED, Phase.PROMPT_QUEUED, Phase.FINAL_QUEUED}),
    Phase.PROMPT_QUEUED: frozenset({Phase.CLAIMED, Phase.OUTPUTS_STORED, Phase.FINAL_QUEUED}),
    Phase.OUTPUTS_STORED: frozenset({Phase.FINAL_QUEUED}),
    Phase.FINAL_QUEUED: frozenset({Phase.FINAL_QUEUED, Phase.DELIVERED, Phase.REFUSED, Phase.EXPIRED}),
    Phase.DELIVERED: frozenset(),
    Phase.REFUSED: frozenset(),
    Phase.EXPIRED: frozenset(),
    Phase.UNREPORTABLE: frozenset(),
}


class PhaseError(RuntimeError):
    """A move the table does not allow: a bug of ours, never a fault of the job."""


def check_move(job: str, old: Phase, new: Phase) -> None:
    """Raise :class:`PhaseError` naming the job and the allowed moves unless ``old -> new`` is allowed."""
    if new not in ALLOWED[old]:
        allowed = ", ".join(sorted(p.value for p in ALLOWED[old])) or "none (closed)"
        raise PhaseError(f"job {job}: cannot move from {old.value} to {new.value} (allowed: {allowed})")
