"""Fixtures for end-to-end runs: the simulated GmAnimato and a moto S3 server (see tests/stack.py)."""
from tests.stack import gmanimato, s3_server  # noqa: F401  (fixtures)
