"""The journal: claimed jobs and their final webhooks on disk, so no process death loses a job.

:mod:`worker.journal.phases` names the phases of a job (pure); :mod:`worker.journal.store` keeps them
in SQLite. What is done with an open job after a crash is decided in :mod:`worker.jobs.recovery`, and
undelivered final webhooks are sent by :mod:`worker.jobs.outbox`.
"""
