"""The simulated NVML binding: in-process as ``worker.sim.nvml``, and as ``import pynvml`` through the shim.

Expected values are the captured ones (``shared/nvml/``); where the capture files are present they are also
read directly, so the simulator cannot drift from them.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from worker.sim import nvml
from worker.sim.launch import project_root

SHARED_NVML = Path(__file__).resolve().parents[3] / "shared" / "nvml"
SHIM = project_root() / "worker" / "sim" / "pynvml_shim"
CAPTURED_UUID = "GPU-23a021a5-88bc-6321-b49b-b825ccd0c1c7"


def captured(name: str) -> dict:
    path = SHARED_NVML / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    return json.loads(path.read_text())


@pytest.fixture
def sim(monkeypatch):
    """The simulated library with a clean environment; fully shut down afterwards."""
    for key in ("SIM_NVML_GPUS", "SIM_NVML_STATE"):
        monkeypatch.delenv(key, raising=False)
    yield nvml
    while nvml._refcount > 0:
        nvml.nvmlShutdown()


def start(sim, monkeypatch, gpus: str | None = None, state: Path | None = None):
    if gpus is not None:
        monkeypatch.setenv("SIM_NVML_GPUS", gpus)
    if state is not None:
        monkeypatch.setenv("SIM_NVML_STATE", str(state))
    sim.nvmlInit()
    return sim


def handles(sim) -> list:
    return [sim.nvmlDeviceGetHandleByIndex(i) for i in range(sim.nvmlDeviceGetCount())]


# ---------------------------------------------------------------- errors


def test_no_driver_raises_library_not_found_like_the_capture(sim, monkeypatch):
    monkeypatch.setenv("SIM_NVML_GPUS", "nodriver")
    with pytest.raises(sim.NVMLError) as caught:
        sim.nvmlInit()
    assert type(caught.value) is sim.NVMLError_LibraryNotFound
    assert str(caught.value) == "NVML Shared Library Not Found" and caught.value.value == 12
    with pytest.raises(sim.NVMLError_Uninitialized) as caught:
        sim.nvmlDeviceGetCount()
    assert str(caught.value) == "Uninitialized" and caught.value.value == 1


def test_error_classes_and_codes_match_the_capture():
    capture = captured("nvml-no-gpu.json")
    assert str(nvml.NVMLError_LibraryNotFound()) == capture["nvmlInit"]["str"]
    for constant, entry in capture["error_codes"].items():
        assert getattr(nvml, constant) == entry["value"]
        cls = getattr(nvml, entry["class"])
        assert issubclass(cls, nvml.NVMLError) and cls().value == entry["value"]
        made = nvml.NVMLError(entry["value"])  # the base class hands back the subclass, as the binding does
        assert type(made) is cls and made.value == entry["value"] and str(made)
    assert nvml.nvmlExceptionClass(15) is nvml.NVMLError_GpuIsLost


def test_names_and_structs_match_the_installed_binding():
    real = pytest.importorskip("pynvml")
    if real is nvml:
        pytest.skip("the shim is on this process's path: the real binding cannot be imported")
    assert {n for n in dir(real) if n.startswith("NVMLError_")} == \
           {n for n in dir(nvml) if n.startswith("NVMLError_")}
    for name in dir(nvml):
        value = getattr(nvml, name)
        if name.startswith(("NVML_", "nvmlEventType", "nvmlClocks")) and isinstance(value, (int, str)):
            assert getattr(real, name) == value, name
    for name, value in vars(real.NVMLError)["_errcode_to_string"].items():
        assert nvml.NVMLError._errcode_to_string[name] == value
    for struct in ("c_nvmlMemory_t", "c_nvmlMemory_v2_t", "c_nvmlUtilization_t", "nvmlPciInfo_t",
                   "c_nvmlProcessInfo_t", "c_nvmlEventData_t"):
        ours, theirs = getattr(nvml, struct), getattr(real, struct)
        assert [f[0] for f in ours._fields_] == [f[0] for f in theirs._fields_], struct
        assert ctypes.sizeof(ours) == ctypes.sizeof(theirs), struct
    for func in ("nvmlInit", "nvmlInitWithFlags", "nvmlShutdown", "nvmlSystemGetDriverVersion",
                 "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetHandleByUUID",
                 "nvmlDeviceGetMemoryInfo", "nvmlEventSetWait_v2", "nvmlDeviceGetComputeRunningProcesses"):
        assert callable(getattr(nvml, func)) and hasattr(real, func)


# ---------------------------------------------------------------- the captured H200


def test_default_is_the_captured_h200(sim, monkeypatch):
    start(sim, monkeypatch)
    assert sim.nvmlDeviceGetCount() == 1
    h = sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetName(h) == "NVIDIA H200"
    assert sim.nvmlDeviceGetUUID(h) == CAPTURED_UUID and isinstance(sim.nvmlDeviceGetUUID(h), str)
    assert sim.nvmlSystemGetDriverVersion() == "580.159.04"
    assert sim.nvmlSystemGetNVMLVersion() == "13.580.159.04"
    assert sim.nvmlSystemGetCudaDriverVersion() == sim.nvmlSystemGetCudaDriverVersion_v2() == 13000
    memory = sim.nvmlDeviceGetMemoryInfo(h)
    assert (memory.total, memory.free, memory.used) == (150754820096, 150109880320, 644939776)
    assert sim.nvmlDeviceGetMigMode(h) == [0, 0] and sim.nvmlDeviceGetEccMode(h) == [1, 1]
    assert sim.nvmlDeviceGetIndex(h) == 0
    assert sim.nvmlDeviceGetHandleByUUID(CAPTURED_UUID).contents.simIndex == 0
    assert sim.nvmlDeviceGetHandleByPciBusId("00000000:00:06.0").contents.simIndex == 0


def test_every_captured_reading_is_reproduced(sim, monkeypatch):
    capture = captured("nvml-h200.json")
    start(sim, monkeypatch)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    device = capture["devices"][0]
    special = {"pci": lambda: sim.nvmlDeviceGetPciInfo(h),
               "temperature_gpu": lambda: sim.nvmlDeviceGetTemperature(h, sim.NVML_TEMPERATURE_GPU),
               "clock_sm": lambda: sim.nvmlDeviceGetClockInfo(h, sim.NVML_CLOCK_SM),
               "clock_mem": lambda: sim.nvmlDeviceGetClockInfo(h, sim.NVML_CLOCK_MEM),
               "max_clock_sm": lambda: sim.nvmlDeviceGetMaxClockInfo(h, sim.NVML_CLOCK_SM),
               "max_clock_mem": lambda: sim.nvmlDeviceGetMaxClockInfo(h, sim.NVML_CLOCK_MEM),
               "ecc_volatile_uncorrected": lambda: sim.nvmlDeviceGetTotalEccErrors(
                   h, sim.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, sim.NVML_VOLATILE_ECC),
               "ecc_aggregate_uncorrected": lambda: sim.nvmlDeviceGetTotalEccErrors(
                   h, sim.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, sim.NVML_AGGREGATE_ECC),
               "register_xid_events": lambda: sim.nvmlDeviceRegisterEvents(
                   h, sim.nvmlEventTypeXidCriticalError, sim.nvmlEventSetCreate()),
               "event_wait_100ms": lambda: wait_100ms(sim, h)}
    checked = 0
    for key, expected in device.items():
        if not isinstance(expected, dict):
            continue
        call = special.get(key) or (lambda key=key: getattr(sim, key)(h))
        if "ok" in expected:
            value = call()
            if hasattr(value, "_fields_"):
                value = {name: getattr(value, name) for name, _ in value._fields_}
            elif isinstance(value, tuple):
                value = list(value)
            if key == "nvmlDeviceGetTotalEnergyConsumption":
                assert value >= expected["ok"]
            else:
                assert value == expected["ok"], key
        else:
            with pytest.raises(sim.NVMLError) as caught:
                call()
            assert type(caught.value).__name__ == expected["class"] and str(caught.value) == expected["nvml_error"]
            assert caught.value.value == expected["value"]
        checked += 1
    assert checked >= 30


def wait_100ms(sim, handle):
    events = sim.nvmlEventSetCreate()
    sim.nvmlDeviceRegisterEvents(handle, sim.nvmlEventTypeXidCriticalError, events)
    return sim.nvmlEventSetWait_v2(events, 100)


# ---------------------------------------------------------------- boards


@pytest.mark.parametrize("count", [0, 1, 4, 8])
def test_gpu_counts(sim, monkeypatch, count):
    start(sim, monkeypatch, str(count))
    assert sim.nvmlDeviceGetCount() == count
    hs = handles(sim)
    uuids = [sim.nvmlDeviceGetUUID(h) for h in hs]
    assert len(set(uuids)) == count and all(len(u) == 40 and u.startswith("GPU-") for u in uuids)
    assert uuids[:1] == [CAPTURED_UUID][:count]
    buses = [sim.nvmlDeviceGetPciInfo(h).busId for h in hs]
    assert buses == sorted(buses) and len(set(buses)) == count
    assert [sim.nvmlDeviceGetMinorNumber(h) for h in hs] == list(range(count))
    assert {sim.nvmlDeviceGetName(h) for h in hs} <= {"NVIDIA H200"}
    with pytest.raises(sim.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetHandleByIndex(count)


def test_identities_are_deterministic(sim, monkeypatch):
    first = [(g.uuid, g.serial, g.bus_id) for g in nvml.sim_gpus({"SIM_NVML_GPUS": "4"})]
    again = [(g.uuid, g.serial, g.bus_id) for g in nvml.sim_gpus({"SIM_NVML_GPUS": "H200,H200,H200,H200"})]
    assert first == again
    start(sim, monkeypatch, "4")
    assert [sim.nvmlDeviceGetUUID(h) for h in handles(sim)] == [u for u, _s, _b in first]


def test_mixed_models(sim, monkeypatch):
    start(sim, monkeypatch, "H200,H100,A100-SXM4-80GB, l40s ,RTX 4090")
    hs = handles(sim)
    assert [sim.nvmlDeviceGetName(h) for h in hs] == [
        "NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "NVIDIA GeForce RTX 4090"]
    totals = [sim.nvmlDeviceGetMemoryInfo(h).total for h in hs]
    assert totals == [150754820096, 85520809984, 85899345920, 48305799168, 25757220864]
    assert sim.nvmlDeviceGetUUID(hs[0]) == CAPTURED_UUID
    assert sim.nvmlDeviceGetFanSpeed(hs[4]) > 0          # a GeForce has fans; the others are passive
    with pytest.raises(sim.NVMLError_NotSupported):
        sim.nvmlDeviceGetMigMode(hs[3])                  # L40S: no MIG
    assert sim.nvmlDeviceGetCudaComputeCapability(hs[2]) == (8, 0)
    with pytest.raises(sim.NVMLError_NotSupported):
        sim.nvmlDeviceGetSerial(hs[4])


def test_model_repeat_and_unknown_model(sim, monkeypatch):
    assert [g.name for g in nvml.sim_gpus({"SIM_NVML_GPUS": "L40S*2,H200"})] == \
           ["NVIDIA L40S", "NVIDIA L40S", "NVIDIA H200"]
    monkeypatch.setenv("SIM_NVML_GPUS", "V100")
    with pytest.raises(ValueError, match="unknown GPU model"):
        sim.nvmlInit()


# ---------------------------------------------------------------- library behaviour


def test_lookups_that_fail(sim, monkeypatch):
    start(sim, monkeypatch, "2")
    with pytest.raises(sim.NVMLError_InvalidArgument) as caught:
        sim.nvmlDeviceGetHandleByIndex(99)
    assert str(caught.value) == "Invalid Argument" and caught.value.value == 2
    with pytest.raises(sim.NVMLError_NotFound):
        sim.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(sim.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetName("not a handle")


def test_uninitialized_and_reference_counted_init(sim, monkeypatch):
    with pytest.raises(sim.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    start(sim, monkeypatch)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    sim.nvmlInitWithFlags(0)
    sim.nvmlShutdown()
    assert sim.nvmlDeviceGetName(h) == "NVIDIA H200"   # one init still holds the library
    sim.nvmlShutdown()
    for call in (sim.nvmlDeviceGetCount, lambda: sim.nvmlDeviceGetName(h), sim.nvmlShutdown):
        with pytest.raises(sim.NVMLError_Uninitialized) as caught:
            call()
        assert str(caught.value) == "Uninitialized"
    sim.nvmlInit()
    assert sim.nvmlDeviceGetUUID(h) == CAPTURED_UUID   # handles stay valid across re-init


def test_unsupported_metrics_raise_not_supported(sim, monkeypatch):
    start(sim, monkeypatch)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    assert sim.nvmlDeviceGetTemperatureV(h, sim.NVML_TEMPERATURE_GPU) == 39
    for call in (sim.nvmlDeviceGetFanSpeed, sim.nvmlDeviceGetRetiredPagesPendingStatus):
        with pytest.raises(sim.NVMLError_NotSupported) as caught:
            call(h)
        assert str(caught.value) == "Not Supported" and caught.value.value == 3


def test_struct_attribute_access(sim, monkeypatch, tmp_path):
    state = tmp_path / "state.json"
    nvml.sim_write_state(state, {"processes": {"0": [[4242, 713031680]]}, "utilization": {"0": [97, 41]}})
    start(sim, monkeypatch, state=state)
    h = sim.nvmlDeviceGetHandleByIndex(0)
    memory = sim.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(memory, ctypes.Structure) and isinstance(memory.total, int)
    assert memory.used == 644939776 + 713031680 and memory.free == memory.total - memory.used
    assert str(memory).startswith("c_nvmlMemory_t(total: 150754820096 B")
    v2 = sim.nvmlDeviceGetMemoryInfo(h, version=sim.nvmlMemory_v2)
    assert v2.reserved == 644939776 and v2.used == 713031680
    rates = sim.nvmlDeviceGetUtilizationRates(h)
    assert (rates.gpu, rates.memory) == (97, 41)
    pci = sim.nvmlDeviceGetPciInfo(h)
    assert pci.busId == "00000000:00:06.0" and pci.busIdLegacy == "0000:00:06.0" and isinstance(pci.busId, str)
    assert (pci.domain, pci.bus, pci.device, pci.pciDeviceId, pci.pciSubSystemId) == (0, 0, 6, 590680286, 415174878)
    [proc] = sim.nvmlDeviceGetComputeRunningProcesses(h)
    assert (proc.pid, proc.usedGpuMemory) == (4242, 713031680)
    assert proc.gpuInstanceId == proc.computeInstanceId == 0xFFFFFFFF


def test_state_file_lost_gpu_and_forced_errors(sim, monkeypatch, tmp_path):
    state = tmp_path / "state.json"
    nvml.sim_write_state(state, {"lost": [2], "memory_used": {"1": 123},
                                 "errors": {"3": {"nvmlDeviceGetPowerUsage": "NotSupported"}}})
    start(sim, monkeypatch, "4", state)
    hs = [sim.nvmlDeviceGetHandleByIndex(i) for i in (0, 1, 3)]
    assert sim.nvmlDeviceGetCount() == 4
    with pytest.raises(sim.NVMLError_GpuIsLost) as caught:
        sim.nvmlDeviceGetHandleByIndex(2)
    assert str(caught.value) == "GPU is lost" and caught.value.value == 15
    assert sim.nvmlDeviceGetMemoryInfo(hs[1]).used == 123
    with pytest.raises(sim.NVMLError_NotSupported):
        sim.nvmlDeviceGetPowerUsage(hs[2])
    nvml.sim_write_state(state, {})                     # lost GPU comes back; re-read on every call
    h2 = sim.nvmlDeviceGetHandleByIndex(2)
    nvml.sim_write_state(state, {"lost": [2]})
    with pytest.raises(sim.NVMLError_GpuIsLost):
        sim.nvmlDeviceGetTemperature(h2, sim.NVML_TEMPERATURE_GPU)
    assert sim.nvmlDeviceGetTemperature(hs[0], sim.NVML_TEMPERATURE_GPU) == 39


def test_state_file_can_fail_init(sim, monkeypatch, tmp_path):
    state = tmp_path / "state.json"
    nvml.sim_write_state(state, {"init_error": "DriverNotLoaded"})
    monkeypatch.setenv("SIM_NVML_STATE", str(state))
    with pytest.raises(sim.NVMLError_DriverNotLoaded):
        sim.nvmlInit()


def test_event_wait_times_out_then_delivers_xid(sim, monkeypatch, tmp_path):
    state = tmp_path / "state.json"
    start(sim, monkeypatch, "2", state)
    events = sim.nvmlEventSetCreate()
    h1 = sim.nvmlDeviceGetHandleByIndex(1)
    sim.nvmlDeviceRegisterEvents(h1, sim.nvmlEventTypeXidCriticalError, events)
    began = time.monotonic()
    with pytest.raises(sim.NVMLError_Timeout) as caught:
        sim.nvmlEventSetWait_v2(events, 100)
    waited = time.monotonic() - began
    assert 0.09 <= waited < 1.0 and str(caught.value) == "Timeout" and caught.value.value == 10
    nvml.sim_write_state(state, {"xid": {"1": [79]}, "lost": []})
    data = sim.nvmlEventSetWait(events, 1000)
    assert data.eventType == sim.nvmlEventTypeXidCriticalError and data.eventData == 79
    assert sim.nvmlDeviceGetUUID(data.device) == sim.nvmlDeviceGetUUID(h1)
    with pytest.raises(sim.NVMLError_Timeout):         # delivered once per event set
        sim.nvmlEventSetWait_v2(events, 10)
    nvml.sim_write_state(state, {"xid": {"1": [79, 48]}, "lost": [1]})
    assert sim.nvmlEventSetWait_v2(events, 10).eventData == 48
    with pytest.raises(sim.NVMLError_GpuIsLost):
        sim.nvmlEventSetWait_v2(events, 10)
    sim.nvmlEventSetFree(events)
    with pytest.raises(sim.NVMLError_InvalidArgument):
        sim.nvmlEventSetWait_v2(events, 10)


# ---------------------------------------------------------------- the shim: a plain ``import pynvml``


def run_with_shim(code: str, **env: str) -> subprocess.CompletedProcess:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_NVML")}
    child_env.update(env, PYTHONPATH=os.pathsep.join([str(SHIM), str(project_root())]))
    return subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True,
                          timeout=30, cwd="/")


SHIM_PROBE = """
import json, pynvml
out = {"module": pynvml.__name__, "file": pynvml.__file__}
try:
    pynvml.nvmlInit()
except pynvml.NVMLError as exc:
    out["error"] = [type(exc).__name__, str(exc), exc.value]
else:
    hs = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    out["gpus"] = [[pynvml.nvmlDeviceGetName(h), pynvml.nvmlDeviceGetUUID(h),
                    pynvml.nvmlDeviceGetMemoryInfo(h).total] for h in hs]
    pynvml.nvmlShutdown()
print(json.dumps(out))
"""


def test_shim_wins_over_the_installed_binding():
    done = run_with_shim(SHIM_PROBE, SIM_NVML_GPUS="H200,L40S")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["module"] == "worker.sim.nvml" and out["file"].endswith(os.path.join("worker", "sim", "nvml.py"))
    assert [g[0] for g in out["gpus"]] == ["NVIDIA H200", "NVIDIA L40S"]
    assert out["gpus"][0][1] == CAPTURED_UUID
    assert out["gpus"] == [[g.name, g.uuid, g.model.memory_total]
                           for g in nvml.sim_gpus({"SIM_NVML_GPUS": "H200,L40S"})]


def test_shim_without_driver():
    done = run_with_shim(SHIM_PROBE, SIM_NVML_GPUS="nodriver")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["error"] == ["NVMLError_LibraryNotFound", "NVML Shared Library Not Found", 12]


def test_shim_alone_on_the_path_finds_the_repository():
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SIM_NVML")}
    child_env["PYTHONPATH"] = str(SHIM)
    done = subprocess.run([sys.executable, "-c", SHIM_PROBE], env=child_env, capture_output=True, text=True,
                          timeout=30, cwd="/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["gpus"][0][1] == CAPTURED_UUID
