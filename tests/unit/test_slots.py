"""Slot planning (GPU selection, ports) and the systemd notify socket."""
from __future__ import annotations

import socket

import pytest

from worker.config import ConfigError, load_config
from worker.supervision.gpus import Gpu, select
from worker.supervision.notify import sd_notify, socket_address
from worker.supervision.slots import assign_ports, plan_slots

GPUS = tuple(Gpu(i, f"GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd", "NVIDIA H200", 150 << 30) for i in range(4))


def test_select_all_none_list_and_exclude():
    assert select(GPUS, "all") == GPUS
    assert select(GPUS, "none") == ()
    assert [g.index for g in select(GPUS, ("2", GPUS[0].uuid.upper()))] == [2, 0]
    assert [g.index for g in select(GPUS, "all", ("1", GPUS[3].uuid))] == [0, 2]
    assert select(GPUS, ("7",)) == ()


def test_assign_ports_skips_taken_and_reserved():
    taken = {8189, 8191}
    assert assign_ports(3, 8188, lambda p: p not in taken) == [8188, 8190, 8192]
    assert assign_ports(2, 8188, lambda p: True, reserved=[8188]) == [8189, 8190]
    with pytest.raises(ConfigError, match="no free port"):
        assign_ports(1, 65535, lambda p: False)


def test_plan_cpu_slot_and_no_fallback():
    config = load_config(None, env={}, overrides={"gpus": "none", "comfy.base_port": 9000})
    plans = plan_slots(config, is_free=lambda p: p != 9000)
    assert [(p.name, p.port, p.gpu_uuid) for p in plans] == [("cpu", 9001, "")]
    strict = load_config(None, env={}, overrides={"gpus": "none", "cpu_fallback": False})
    with pytest.raises(ConfigError, match="gpus: nothing to run on .* cpu_fallback is false"):
        plan_slots(strict)


def test_plan_attach_slots():
    config = load_config(None, env={"COMFY_HOST": "127.0.0.1:8190"})
    plans = plan_slots(config)
    assert [(p.name, p.comfy_url) for p in plans] == [("slot0", "http://127.0.0.1:8190")]


def test_socket_address_forms():
    assert socket_address("@systemd/notify") == b"\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_sd_notify_reaches_abstract_and_path_sockets(tmp_path):
    assert sd_notify("READY=1", env={}) is False
    for address, env_value in ((b"\0gmanimato-test-%d" % id(tmp_path), None), (str(tmp_path / "notify"), None)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(address)
            server.settimeout(5)
            value = "@" + address[1:].decode() if isinstance(address, bytes) else address
            assert sd_notify("READY=1", env={"NOTIFY_SOCKET": value})
            assert server.recv(64) == b"READY=1"
    assert sd_notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "missing")}) is False
