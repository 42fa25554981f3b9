"""A simulated ``pynvml`` (the nvidia-ml-py binding of NVML) for machines without an NVIDIA GPU.

It has the names, return kinds and errors of nvidia-ml-py 13.x as captured on a real H200
(``shared/nvml/nvml-h200.json``) and on a machine without a driver (``nvml-no-gpu.json``): strings come back
as ``str``, structs as ctypes structures read by attribute (``info.total``), handles as ctypes pointers, and
every failure as the ``NVMLError_*`` subclass of :class:`NVMLError` that the real binding raises, with the
same ``str()`` and ``.value``. Import it as ``worker.sim.nvml``, or put ``worker/sim/pynvml_shim`` first on
``PYTHONPATH`` so that a plain ``import pynvml`` gets this module.

Configuration (environment, read by ``nvmlInit``):

``SIM_NVML_GPUS``
    unset or empty: one H200 exactly as captured. An integer ``N``: N H200s (``0``: driver present, no GPU).
    A comma list of models, each optionally ``MODEL*N``: ``H200,H200,A100-SXM4-80GB,L40S``.
    ``nodriver``: ``nvmlInit`` raises ``NVMLError_LibraryNotFound`` as on a machine without a driver.
    Models: see :data:`MODELS` (H200, H100 80GB HBM3, A100-SXM4-80GB, L40S, RTX 4090; case and
    punctuation are ignored, ``NVIDIA``/``GeForce`` prefixes too).
``SIM_NVML_STATE``
    optional path of a JSON file, re-read on every call, that changes readings at run time (GPU keys are
    indexes as strings or ints). Write it atomically (:func:`sim_write_state`). Keys::

        {"lost": [2],                          # every call on GPU 2 raises NVMLError_GpuIsLost
         "memory_used": {"1": 123},            # bytes used (free = total - used)
         "utilization": {"0": [90, 40]},       # gpu %, memory %
         "temperature": {"0": 85}, "power": {"0": 650000},   # C, mW
         "processes": {"0": [[4242, 713031680]]},            # compute processes: pid, bytes
         "xid": {"0": [79]},                   # Xid critical events, delivered in order to each event set
         "ecc_uncorrected": {"0": 2},          # volatile and aggregate uncorrected ECC errors
         "remapped_rows": {"0": [2, 1, 1, 0]}, # corrected, uncorrected, pending, failure
         "errors": {"0": {"nvmlDeviceGetPowerUsage": "NotSupported"}},  # force a call to fail
         "init_error": "DriverNotLoaded"}      # nvmlInit fails with this error

Unless ``memory_used`` is given, ``used`` is the board's idle reservation plus the listed processes.

Helpers for the other simulators and tests (not part of pynvml): :func:`sim_gpus`, :func:`sim_driver_present`,
:func:`sim_memory`, :func:`sim_is_lost`, :func:`sim_write_state`, :class:`SimGpu`.
"""
from __future__ import annotations

import dataclasses

import ctypes
import json
import os
import re
import string
import sys
import threading
import time
import uuid as _uuid
from ctypes import POINTER, Structure, c_char, c_uint, c_ulonglong
from dataclasses import dataclass
from functools import wraps

# ---------------------------------------------------------------- constants (values of nvidia-ml-py 13.x)

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22
NVML_ERROR_INSUFFICIENT_RESOURCES = 23
NVML_ERROR_FREQ_NOT_SUPPORTED = 24
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
NVML_ERROR_NOT_READY = 27
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_INVALID_STATE = 29
NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30
NVML_ERROR_UNKNOWN = 999

NVML_INIT_FLAG_NO_GPUS = 1
NVML_INIT_FLAG_NO_ATTACH = 2
NVML_INIT_FLAG_FORCE_INIT = 4

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_GPU_MAX = 1
NVML_TEMPERATURE_COUNT = 2
NVML_TEMPERATURE_THRESHOLD_SHUTDOWN = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
NVML_TEMPERATURE_THRESHOLD_GPU_MAX = 3
NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_MIN = 4
NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR = 5
NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_MAX = 6
NVML_TEMPERATURE_THRESHOLD_GPS_CURR = 7
NVML_TEMPERATURE_THRESHOLD_COUNT = 8

NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_CLOCK_VIDEO = 3
NVML_CLOCK_COUNT = 4
NVML_CLOCK_ID_CURRENT = 0
NVML_CLOCK_ID_APP_CLOCK_TARGET = 1
NVML_CLOCK_ID_APP_CLOCK_DEFAULT = 2
NVML_CLOCK_ID_CUSTOMER_BOOST_MAX = 3
NVML_CLOCK_ID_COUNT = 4

NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_MEMORY_ERROR_TYPE_COUNT = 2
NVML_SINGLE_BIT_ECC = 0
NVML_DOUBLE_BIT_ECC = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_ECC_COUNTER_TYPE_COUNT = 2
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PAGE_RETIREMENT_CAUSE_COUNT = 2

NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 1
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_COMPUTEMODE_COUNT = 4

NVML_BRAND_UNKNOWN = 0
NVML_BRAND_QUADRO = 1
NVML_BRAND_TESLA = 2
NVML_BRAND_NVS = 3
NVML_BRAND_GRID = 4
NVML_BRAND_GEFORCE = 5
NVML_BRAND_TITAN = 6
NVML_BRAND_NVIDIA_VAPPS = 7
NVML_BRAND_NVIDIA_VPC = 8
NVML_BRAND_NVIDIA_VCS = 9
NVML_BRAND_NVIDIA_VWS = 10
NVML_BRAND_NVIDIA_CLOUD_GAMING = 11
NVML_BRAND_NVIDIA_VGAMING = 11
NVML_BRAND_QUADRO_RTX = 12
NVML_BRAND_NVIDIA_RTX = 13
NVML_BRAND_NVIDIA = 14
NVML_BRAND_GEFORCE_RTX = 15
NVML_BRAND_TITAN_RTX = 16
NVML_BRAND_NVIDIA_DLA = 17
NVML_BRAND_NVIDIA_VGAMEDEV = 18
NVML_BRAND_NVIDIA_NPU = 19
NVML_BRAND_COUNT = 20

NVML_DEVICE_ARCH_KEPLER = 2
NVML_DEVICE_ARCH_MAXWELL = 3
NVML_DEVICE_ARCH_PASCAL = 4
NVML_DEVICE_ARCH_VOLTA = 5
NVML_DEVICE_ARCH_TURING = 6
NVML_DEVICE_ARCH_AMPERE = 7
NVML_DEVICE_ARCH_ADA = 8
NVML_DEVICE_ARCH_HOPPER = 9
NVML_DEVICE_ARCH_BLACKWELL = 10
NVML_DEVICE_ARCH_DLA = 11
NVML_DEVICE_ARCH_DLA2 = 12
NVML_DEVICE_ARCH_RUBIN = 13
NVML_DEVICE_ARCH_NPU3 = 15
NVML_DEVICE_ARCH_UNKNOWN = 0xFFFFFFFF

NVML_PSTATE_0, NVML_PSTATE_1, NVML_PSTATE_2, NVML_PSTATE_3 = 0, 1, 2, 3
NVML_PSTATE_4, NVML_PSTATE_5, NVML_PSTATE_6, NVML_PSTATE_7 = 4, 5, 6, 7
NVML_PSTATE_8, NVML_PSTATE_9, NVML_PSTATE_10, NVML_PSTATE_11 = 8, 9, 10, 11
NVML_PSTATE_12, NVML_PSTATE_13, NVML_PSTATE_14, NVML_PSTATE_15 = 12, 13, 14, 15
NVML_PSTATE_UNKNOWN = 32

nvmlEventTypeNone = 0x0
nvmlEventTypeSingleBitEccError = 0x1
nvmlEventTypeDoubleBitEccError = 0x2
nvmlEventTypePState = 0x4
nvmlEventTypeXidCriticalError = 0x8
nvmlEventTypeClock = 0x10
nvmlEventTypePowerSourceChange = 0x80
nvmlEventTypeSingleBitEccErrorStorm = 0x200
nvmlEventTypeDramRetirementEvent = 0x400
nvmlEventTypeDramRetirementFailure = 0x800
nvmlEventTypeNonFatalPoisonError = 0x1000
nvmlEventTypeFatalPoisonError = 0x2000
nvmlEventTypeGpuUnavailableError = 0x4000
nvmlEventTypeGpuRecoveryAction = 0x8000
nvmlEventTypeAll = 0xFF9F

nvmlClocksEventReasonNone = 0x0
nvmlClocksEventReasonGpuIdle = 0x1
nvmlClocksEventReasonApplicationsClocksSetting = 0x2
nvmlClocksEventReasonUserDefinedClocks = 0x2
nvmlClocksEventReasonSwPowerCap = 0x4
nvmlClocksEventReasonHwSlowdown = 0x8
nvmlClocksEventReasonSyncBoost = 0x10
nvmlClocksEventReasonSwThermalSlowdown = 0x20
nvmlClocksEventReasonHwThermalSlowdown = 0x40
nvmlClocksEventReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksEventReasonDisplayClockSetting = 0x100
nvmlClocksEventReasonAll = 0x1FF
nvmlClocksThrottleReasonNone = 0x0
nvmlClocksThrottleReasonGpuIdle = 0x1
nvmlClocksThrottleReasonApplicationsClocksSetting = 0x2
nvmlClocksThrottleReasonUserDefinedClocks = 0x2
nvmlClocksThrottleReasonSwPowerCap = 0x4
nvmlClocksThrottleReasonHwSlowdown = 0x8
nvmlClocksThrottleReasonSyncBoost = 0x10
nvmlClocksThrottleReasonSwThermalSlowdown = 0x20
nvmlClocksThrottleReasonHwThermalSlowdown = 0x40
nvmlClocksThrottleReasonHwPowerBrakeSlowdown = 0x80
nvmlClocksThrottleReasonDisplayClockSetting = 0x100
nvmlClocksThrottleReasonBoardLimit = 0x200
nvmlClocksThrottleReasonReliability = 0x400
nvmlClocksThrottleReasonAll = 0x7FF

NVML_DEVICE_NAME_BUFFER_SIZE = 64
NVML_DEVICE_NAME_V2_BUFFER_SIZE = 96
NVML_DEVICE_UUID_BUFFER_SIZE = 80
NVML_DEVICE_UUID_V2_BUFFER_SIZE = 96
NVML_DEVICE_UUID_ASCII_LEN = 41
NVML_DEVICE_UUID_BINARY_LEN = 16
NVML_DEVICE_SERIAL_BUFFER_SIZE = 30
NVML_DEVICE_PART_NUMBER_BUFFER_SIZE = 80
NVML_DEVICE_GPU_PART_NUMBER_BUFFER_SIZE = 80
NVML_DEVICE_VBIOS_VERSION_BUFFER_SIZE = 32
NVML_DEVICE_INFOROM_VERSION_BUFFER_SIZE = 16
NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE = 32
NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE = 16
NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE = 80
NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE = 80
NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT = "%04X:%02X:%02X.0"
NVML_DEVICE_PCI_BUS_ID_FMT = "%08X:%02X:%02X.0"
NVML_VALUE_NOT_AVAILABLE_ulonglong = c_ulonglong(-1)
NVML_VALUE_NOT_AVAILABLE_uint = c_uint(-1)
nvmlMemory_v2 = 0x02000028

# ---------------------------------------------------------------- errors (the binding's own hierarchy)


class NVMLError(Exception):
    """Base of every NVML failure. ``NVMLError(value)`` returns the subclass for that code, as in the binding."""

    _valClassMapping: dict = {}
    # The binding's own table; codes it lacks are asked of the library (nvmlErrorString below).
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_ALREADY_INITIALIZED: "Already Initialized",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_INSUFFICIENT_SIZE: "Insufficient Size",
        NVML_ERROR_INSUFFICIENT_POWER: "Insufficient External Power",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_IRQ_ISSUE: "Interrupt Request Issue",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_CORRUPTED_INFOROM: "Corrupted infoROM",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_OPERATING_SYSTEM: "The operating system has blocked the request.",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_MEMORY: "Insufficient Memory",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(typ, value):
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self):
        try:
            if self.value not in NVMLError._errcode_to_string:
                NVMLError._errcode_to_string[self.value] = str(nvmlErrorString(self.value))
            return NVMLError._errcode_to_string[self.value]
        except NVMLError:
            return "NVML Error with code %d" % self.value

    def __eq__(self, other):
        return self.value == other.value


def nvmlExceptionClass(nvmlErrorCode):
    if nvmlErrorCode not in NVMLError._valClassMapping:
        raise ValueError('nvmlErrorCode %s is not valid' % nvmlErrorCode)
    return NVMLError._valClassMapping[nvmlErrorCode]


def _extractNVMLErrorsAsClasses():
    """One subclass per ``NVML_ERROR_*``: NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost (the binding's rule)."""
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val):
            def new(typ, *args):
                return NVMLError.__new__(typ, val)
            return new
        new_error_class = type(class_name, (NVMLError,), {'__new__': gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()

# What libnvidia-ml's nvmlErrorString answers for the codes the binding's table lacks (not captured).
_LIBRARY_ERROR_STRINGS = {
    NVML_ERROR_IN_USE: "In use by another client",
    NVML_ERROR_NO_DATA: "No data",
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED: "The requested vgpu operation is not available on target device, "
                                       "because ECC is enabled",
    NVML_ERROR_INSUFFICIENT_RESOURCES: "Insufficient resources",
    NVML_ERROR_FREQ_NOT_SUPPORTED: "Frequency not supported",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
    NVML_ERROR_DEPRECATED: "Deprecated",
    NVML_ERROR_NOT_READY: "Not ready",
    NVML_ERROR_GPU_NOT_FOUND: "GPU not found",
    NVML_ERROR_INVALID_STATE: "Invalid state",
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: "Reset type not supported",
}


def nvmlErrorString(result):
    if result == NVML_SUCCESS:
        return "Success"
    return NVMLError._errcode_to_string.get(result) or _LIBRARY_ERROR_STRINGS.get(result, "Unknown Error")


def _raise(code: int):
    raise NVMLError(code)


def _error_code(name_or_code) -> int:
    """``3``, ``"NotSupported"``, ``"NVMLError_NotSupported"`` or ``"NVML_ERROR_NOT_SUPPORTED"`` -> 3."""
    if isinstance(name_or_code, int):
        return name_or_code
    text = str(name_or_code)
    if text.startswith("NVML_ERROR_"):
        return globals()[text]
    cls = globals().get(text if text.startswith("NVMLError_") else "NVMLError_" + text)
    if isinstance(cls, type) and issubclass(cls, NVMLError):
        return cls().value
    raise ValueError(f"unknown NVML error {name_or_code!r}")


# ---------------------------------------------------------------- structs (same classes and fields as the binding)


class _PrintableStructure(Structure):
    """ctypes structure printed as ``name(field: value, ...)``; char arrays read back as ``str``."""

    _fmt_: dict = {}

    def __str__(self):
        result = []
        for x in self._fields_:
            key = x[0]
            value = getattr(self, key)
            fmt = "%s"
            if key in self._fmt_:
                fmt = self._fmt_[key]
            elif "<default>" in self._fmt_:
                fmt = self._fmt_["<default>"]
            result.append(("%s: " + fmt) % (key, value))
        return self.__class__.__name__ + "(" + ", ".join(result) + ")"

    def __getattribute__(self, name):
        res = super().__getattribute__(name)
        if isinstance(res, bytes):
            return res.decode()
        return res

    def __setattr__(self, name, value):
        if isinstance(value, str):
            value = value.encode()
        super().__setattr__(name, value)


class struct_c_nvmlDevice_t(Structure):
    _fields_ = [("simIndex", c_uint)]  # opaque in the real binding


c_nvmlDevice_t = POINTER(struct_c_nvmlDevice_t)


class struct_c_nvmlEventSet_t(Structure):
    _fields_ = [("simId", c_uint)]  # opaque in the real binding


c_nvmlEventSet_t = POINTER(struct_c_nvmlEventSet_t)


class c_nvmlMemory_t(_PrintableStructure):
    _fields_ = [('total', c_ulonglong), ('free', c_ulonglong), ('used', c_ulonglong)]
    _fmt_ = {'<default>': "%d B"}


class c_nvmlMemory_v2_t(_PrintableStructure):
    _fields_ = [('version', c_uint), ('total', c_ulonglong), ('reserved', c_ulonglong), ('free', c_ulonglong),
                ('used', c_ulonglong)]
    _fmt_ = {'<default>': "%d B"}


class c_nvmlUtilization_t(_PrintableStructure):
    _fields_ = [('gpu', c_uint), ('memory', c_uint)]
    _fmt_ = {'<default>': "%d %%"}


class nvmlPciInfo_t(_PrintableStructure):
    _fields_ = [
        ('busIdLegacy', c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE),
        ('domain', c_uint),
        ('bus', c_uint),
        ('device', c_uint),
        ('pciDeviceId', c_uint),
        ('pciSubSystemId', c_uint),
        ('busId', c_char * NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE),
    ]
    _fmt_ = {'domain': "0x%08X", 'bus': "0x%02X", 'device': "0x%02X", 'pciDeviceId': "0x%08X",
             'pciSubSystemId': "0x%08X"}


class c_nvmlProcessInfo_v2_t(_PrintableStructure):
    _fields_ = [('pid', c_uint), ('usedGpuMemory', c_ulonglong), ('gpuInstanceId', c_uint),
                ('computeInstanceId', c_uint)]
    _fmt_ = {'usedGpuMemory': "%d B"}


c_nvmlProcessInfo_v3_t = c_nvmlProcessInfo_v2_t
c_nvmlProcessInfo_t = c_nvmlProcessInfo_v3_t


class c_nvmlEventData_t(_PrintableStructure):
    _fields_ = [('device', c_nvmlDevice_t), ('eventType', c_ulonglong), ('eventData', c_ulonglong),
                ('gpuInstanceId', c_uint), ('computeInstanceId', c_uint)]
    _fmt_ = {'eventType': "0x%08X"}


class nvmlFriendlyObject(object):
    """What the binding returns for process lists: a plain object with the struct's fields as attributes."""

    def __init__(self, dictionary):
        for x in dictionary:
            setattr(self, x, dictionary[x])

    def __str__(self):
        return self.__dict__.__str__()


def nvmlStructToFriendlyObject(struct):
    d = {}
    for x in struct._fields_:
        value = getattr(struct, x[0])
        d[x[0]] = value.decode() if isinstance(value, bytes) else value
    return nvmlFriendlyObject(d)


def convertStrBytes(func):
    """The binding's decorator: ``str`` arguments go in as bytes, ``bytes`` results come back as ``str``."""
    @wraps(func)
    def wrapper(*args, **kwargs):
        args = [arg.encode() if isinstance(arg, str) else arg for arg in args]
        res = func(*args, **kwargs)
        return res.decode() if isinstance(res, bytes) else res
    return wrapper


# ---------------------------------------------------------------- the simulated boards

CAPTURED_UUID = "GPU-23a021a5-88bc-6321-b49b-b825ccd0c1c7"
SIM_DRIVER_VERSION = "580.159.04"
SIM_NVML_VERSION = "13.580.159.04"
SIM_CUDA_DRIVER_VERSION = 13000
_NA_UINT = 0xFFFFFFFF


@dataclass(frozen=True)
class Model:
    """Static readings of one board model. ``None`` for a reading means the call raises NotSupported."""

    key: str
    name: str
    memory_total: int
    reserved: int                  # ``used`` with nothing running (v1 API); CUDA sees total - reserved
    pci_device_id: int
    pci_subsystem_id: int
    power_limit: int               # mW
    power_idle: int                # mW
    temperature: int               # C, idle
    clocks: dict                   # current {NVML_CLOCK_*: MHz}
    max_clocks: dict
    architecture: int
    compute_capability: tuple
    sm_count: int
    brand: int
    fan: int | None
    ecc: list | None
    mig: list | None
    remapped_rows: tuple | None
    serial_supported: bool
    part_number: str | None
    vbios: str
    persistence: int
    display_mode: int
    pstate: int
    event_types: int
    temperature_thresholds: dict


_HOPPER_THRESHOLDS = {NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 92, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 89,
                      NVML_TEMPERATURE_THRESHOLD_MEM_MAX: 95, NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 87}

MODELS: dict[str, Model] = {m.key: m for m in (
    # Every reading of the H200 is the captured one (nvml-h200.json, nvidia-smi-q.xml).
    Model("H200", "NVIDIA H200", 150754820096, 644939776, 0x233510DE, 0x18BF10DE, 700000, 95900, 39,
          {NVML_CLOCK_GRAPHICS: 345, NVML_CLOCK_SM: 345, NVML_CLOCK_MEM: 3201, NVML_CLOCK_VIDEO: 765},
          {NVML_CLOCK_GRAPHICS: 1980, NVML_CLOCK_SM: 1980, NVML_CLOCK_MEM: 3201, NVML_CLOCK_VIDEO: 1545},
          NVML_DEVICE_ARCH_HOPPER, (9, 0), 132, NVML_BRAND_NVIDIA, None, [1, 1], [0, 0], (0, 0, 0, 0), True,
          "692-2G520-0282-001", "96.00.A5.00.1A", 1, 1, 0, 65439, _HOPPER_THRESHOLDS),
    # The others: plausible readings of those boards (not captured).
    Model("H100 80GB HBM3", "NVIDIA H100 80GB HBM3", 85520809984, 566231040, 0x233010DE, 0x16C110DE, 700000,
          71500, 33,
          {NVML_CLOCK_GRAPHICS: 345, NVML_CLOCK_SM: 345, NVML_CLOCK_MEM: 2619, NVML_CLOCK_VIDEO: 765},
          {NVML_CLOCK_GRAPHICS: 1980, NVML_CLOCK_SM: 1980, NVML_CLOCK_MEM: 2619, NVML_CLOCK_VIDEO: 1545},
          NVML_DEVICE_ARCH_HOPPER, (9, 0), 132, NVML_BRAND_NVIDIA, None, [1, 1], [0, 0], (0, 0, 0, 0), True,
          "692-2G520-0200-000", "96.00.74.00.0B", 1, 1, 0, 65439, _HOPPER_THRESHOLDS),
    Model("A100-SXM4-80GB", "NVIDIA A100-SXM4-80GB", 85899345920, 609222656, 0x20B210DE, 0x147F10DE, 400000,
          61800, 31,
          {NVML_CLOCK_GRAPHICS: 210, NVML_CLOCK_SM: 210, NVML_CLOCK_MEM: 1593, NVML_CLOCK_VIDEO: 795},
          {NVML_CLOCK_GRAPHICS: 1410, NVML_CLOCK_SM: 1410, NVML_CLOCK_MEM: 1593, NVML_CLOCK_VIDEO: 1290},
          NVML_DEVICE_ARCH_AMPERE, (8, 0), 108, NVML_BRAND_NVIDIA, None, [1, 1], [0, 0], (0, 0, 0, 0), True,
          "692-2G506-0210-002", "92.00.45.00.03", 1, 1, 0, 65439,
          {NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 92, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 89,
           NVML_TEMPERATURE_THRESHOLD_MEM_MAX: 95, NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 85}),
    Model("L40S", "NVIDIA L40S", 48305799168, 584056832, 0x26B910DE, 0x185110DE, 350000, 34200, 30,
          {NVML_CLOCK_GRAPHICS: 210, NVML_CLOCK_SM: 210, NVML_CLOCK_MEM: 405, NVML_CLOCK_VIDEO: 1215},
          {NVML_CLOCK_GRAPHICS: 2520, NVML_CLOCK_SM: 2520, NVML_CLOCK_MEM: 9001, NVML_CLOCK_VIDEO: 1965},
          NVML_DEVICE_ARCH_ADA, (8, 9), 142, NVML_BRAND_NVIDIA, None, [1, 1], None, (0, 0, 0, 0), True,
          "900-2G133-0080-000", "95.02.66.00.02", 1, 1, 8, 65439,
          {NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 93, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 90,
           NVML_TEMPERATURE_THRESHOLD_MEM_MAX: 95, NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 88}),
    Model("RTX 4090", "NVIDIA GeForce RTX 4090", 25757220864, 441647104, 0x268410DE, 0x16F310DE, 450000,
          18300, 35,
          {NVML_CLOCK_GRAPHICS: 210, NVML_CLOCK_SM: 210, NVML_CLOCK_MEM: 405, NVML_CLOCK_VIDEO: 1185},
          {NVML_CLOCK_GRAPHICS: 3105, NVML_CLOCK_SM: 3105, NVML_CLOCK_MEM: 10501, NVML_CLOCK_VIDEO: 2415},
          NVML_DEVICE_ARCH_ADA, (8, 9), 128, NVML_BRAND_GEFORCE, 30, [0, 0], None, None, False,
          None, "95.02.3C.40.D6", 0, 1, 8, 0xFF9C,
          {NVML_TEMPERATURE_THRESHOLD_SHUTDOWN: 95, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN: 92,
           NVML_TEMPERATURE_THRESHOLD_GPU_MAX: 90}),
)}


def _norm(text: str) -> str:
    text = "".join(ch for ch in text.upper() if ch.isalnum())
    for prefix in ("NVIDIA", "GEFORCE"):
        text = text.removeprefix(prefix)
    return text


_ALIASES = {**{_norm(m.key): m.key for m in MODELS.values()}, **{_norm(m.name): m.key for m in MODELS.values()},
            "H100": "H100 80GB HBM3", "H100SXM": "H100 80GB HBM3", "H100SXM580GB": "H100 80GB HBM3",
            "A100": "A100-SXM4-80GB", "A10080GB": "A100-SXM4-80GB", "A100SXM": "A100-SXM4-80GB",
            "4090": "RTX 4090", "H200141GB": "H200", "H200SXM": "H200"}

# PCI buses of an 8-GPU HGX board, in order; GPU 0 that is an H200 is the captured board at 00:06.0.
_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_UUID_NAMESPACE = _uuid.UUID("5b0f7a52-6d3e-4c1e-9a57-3c0de6a1e200")
MAX_GPUS = 32


@dataclass(frozen=True)
class SimGpu:
    """One simulated board: its NVML index (PCI order) and identity."""

    index: int
    model: Model
    uuid: str
    serial: str
    domain: int
    bus: int
    device: int
    minor: int
    captured: bool           # the H200 of the capture (its remapped rows, energy counter, serial)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def bus_id(self) -> str:
        return NVML_DEVICE_PCI_BUS_ID_FMT % (self.domain, self.bus, self.device)

    @property
    def cuda_total(self) -> int:
        """What CUDA (``cudaMemGetInfo``, ComfyUI's ``vram_total``) reports as the total: NVML total - reserved."""
        return self.model.memory_total - self.model.reserved


def parse_gpu_spec(spec: str | None) -> list[str] | None:
    """``SIM_NVML_GPUS`` -> model keys in PCI order, or ``None`` for "no driver"."""
    text = (spec or "").strip()
    if not text:
        return ["H200"]
    if text.lower() in ("nodriver", "no-driver", "no_driver"):
        return None
    if text.isdigit():
        keys = ["H200"] * int(text)
    else:
        keys = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, _, times = item.partition("*")
            key = _ALIASES.get(_norm(name))
            if key is None or (times and not times.strip().isdigit()):
                raise ValueError(f"SIM_NVML_GPUS: unknown GPU model {item!r}; "
                                 f"known: {', '.join(MODELS)} (or a count, or 'nodriver')")
            keys.extend([key] * (int(times) if times else 1))
    if len(keys) > MAX_GPUS:
        raise ValueError(f"SIM_NVML_GPUS: at most {MAX_GPUS} GPUs, got {len(keys)}")
    return keys


def _make_gpu(index: int, key: str) -> SimGpu:
    model = MODELS[key]
    if index == 0 and key == "H200":
        return SimGpu(0, model, CAPTURED_UUID, "1654024029486", 0, 0x00, 0x06, 0, True)
    ident = _uuid.uuid5(_UUID_NAMESPACE, f"{key}:{index}")
    bus = _BUSES[index] if index < len(_BUSES) else _BUSES[-1] + index - len(_BUSES) + 1
    serial = str(1650000000000 + ident.int % 10_000_000_000)
    return SimGpu(index, model, f"GPU-{ident}", serial, 0, bus, 0x00, index, False)


def real_gpus() -> list[SimGpu]:
    """``SIM_NVML_GPUS=real``: the boards the installed NVML binding reports (for a smoke test of the
    simulated ComfyUI on a real GPU machine); ``[]`` when there is no driver."""
    import importlib
    import sys as _sys

    binding = importlib.import_module("pynvml")
    if binding is _sys.modules[__name__]:
        raise ValueError("SIM_NVML_GPUS=real needs the real nvidia-ml-py, not the simulated pynvml")
    try:
        binding.nvmlInit()
    except binding.NVMLError:
        return []
    try:
        gpus = []
        for i in range(binding.nvmlDeviceGetCount()):
            handle = binding.nvmlDeviceGetHandleByIndex(i)
            name, uuid = binding.nvmlDeviceGetName(handle), binding.nvmlDeviceGetUUID(handle)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            model = dataclasses.replace(MODELS["H200"], name=name,
                                        memory_total=int(binding.nvmlDeviceGetMemoryInfo(handle).total))
            gpus.append(SimGpu(i, model, uuid, "", 0, i, 0, i, False))
        return gpus
    finally:
        binding.nvmlShutdown()


def sim_gpus(environ=None) -> list[SimGpu]:
    """The GPUs ``SIM_NVML_GPUS`` configures (``[]`` with no driver), without initialising anything."""
    if ((os.environ if environ is None else environ).get("SIM_NVML_GPUS") or "").strip() == "real":
        return real_gpus()
    keys = parse_gpu_spec((os.environ if environ is None else environ).get("SIM_NVML_GPUS"))
    return [_make_gpu(i, key) for i, key in enumerate(keys or [])]


def sim_driver_present(environ=None) -> bool:
    return parse_gpu_spec((os.environ if environ is None else environ).get("SIM_NVML_GPUS")) is not None


# ---------------------------------------------------------------- run-time state (SIM_NVML_STATE)

_last_state: dict = {}


def _read_state(environ=None) -> dict:
    """The JSON of ``SIM_NVML_STATE`` (``{}`` when unset or missing; the last good one when half-written)."""
    global _last_state
    path = (os.environ if environ is None else environ).get("SIM_NVML_STATE")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return _last_state
    _last_state = state if isinstance(state, dict) else {}
    return _last_state


def _per_gpu(state: dict, key: str, index: int, default=None):
    table = state.get(key) or {}
    if isinstance(table, dict):
        return table.get(str(index), table.get(index, default))  # type: ignore[call-overload]
    return default


def sim_is_lost(gpu: SimGpu, environ=None) -> bool:
    lost = _read_state(environ).get("lost") or []
    return gpu.index in {int(i) for i in lost}


def _processes(state: dict, gpu: SimGpu) -> list[tuple[int, int]]:
    return [(int(p[0]), int(p[1])) for p in _per_gpu(state, "processes", gpu.index, []) or []]


def sim_memory(gpu: SimGpu, environ=None) -> tuple[int, int, int]:
    """NVML's ``(total, used, free)`` for ``gpu`` now."""
    state = _read_state(environ)
    used = _per_gpu(state, "memory_used", gpu.index)
    if used is None:
        used = gpu.model.reserved + sum(mem for _pid, mem in _processes(state, gpu))
    total = gpu.model.memory_total
    used = max(0, min(int(used), total))
    return total, used, total - used


def sim_write_state(path, state: dict) -> None:
    """Replace the state file atomically, so a reader never sees half a file."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(tmp, path)


# ---------------------------------------------------------------- library state

_lock = threading.RLock()
_refcount = 0
_NEVER = object()
_spec_loaded: object = _NEVER
_gpus: list[SimGpu] = []
_handles: list = []                 # struct_c_nvmlDevice_t per GPU (kept alive; handles point at them)
_by_address: dict[int, SimGpu] = {}
_event_sets: dict[int, "_EventSet"] = {}
_next_set_id = 1
_T0 = time.monotonic()


class _EventSet:
    def __init__(self, struct: struct_c_nvmlEventSet_t) -> None:
        self.struct = struct
        self.registered: dict[int, int] = {}      # GPU index -> event mask
        self.delivered: dict[int, int] = {}       # GPU index -> Xid events already returned


def _require_init() -> None:
    if _refcount <= 0:
        _raise(NVML_ERROR_UNINITIALIZED)


def _gpu_of(handle) -> SimGpu:
    """The board a handle names; InvalidArgument for anything else, GpuIsLost for a lost board."""
    _require_init()
    if not isinstance(handle, c_nvmlDevice_t) or not handle:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    gpu = _by_address.get(ctypes.addressof(handle.contents))
    if gpu is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    _check_gpu(gpu, sys._getframe(1).f_code.co_name)
    return gpu


def _check_gpu(gpu: SimGpu, call: str, state: dict | None = None) -> dict:
    state = _read_state() if state is None else state
    if gpu.index in {int(i) for i in state.get("lost") or []}:
        _raise(NVML_ERROR_GPU_IS_LOST)
    forced = {re.sub(r"_v\d+$", "", name): code for name, code in (_per_gpu(state, "errors", gpu.index) or {}).items()}
    call = re.sub(r"_v\d+$", "", call)
    if call in forced:
        _raise(_error_code(forced[call]))
    return state


def _handle(gpu: SimGpu):
    return ctypes.pointer(_handles[gpu.index])


def _load(spec: str | None) -> None:
    """Build the device table for ``spec`` (kept, with its handles, while the spec stays the same)."""
    global _spec_loaded, _gpus, _handles, _by_address
    if spec == _spec_loaded:
        return
    keys = parse_gpu_spec(spec) or []
    _gpus = [_make_gpu(i, key) for i, key in enumerate(keys)]
    _handles = [struct_c_nvmlDevice_t(gpu.index) for gpu in _gpus]
    _by_address = {ctypes.addressof(s): gpu for s, gpu in zip(_handles, _gpus)}
    _spec_loaded = spec


# ---------------------------------------------------------------- init / system


def nvmlInitWithFlags(flags):
    global _refcount
    with _lock:
        spec = os.environ.get("SIM_NVML_GPUS")
        if parse_gpu_spec(spec) is None:
            _raise(NVML_ERROR_LIBRARY_NOT_FOUND)
        init_error = _read_state().get("init_error")
        if init_error:
            _raise(_error_code(init_error))
        if _refcount == 0:
            _load(spec)
        _refcount += 1
    return None


def nvmlInit():
    nvmlInitWithFlags(0)
    return None


def nvmlShutdown():
    global _refcount
    with _lock:
        _require_init()
        _refcount -= 1
        if _refcount == 0:
            _event_sets.clear()
    return None


@convertStrBytes
def nvmlSystemGetDriverVersion():
    _require_init()
    return SIM_DRIVER_VERSION.encode()


@convertStrBytes
def nvmlSystemGetNVMLVersion():
    _require_init()
    return SIM_NVML_VERSION.encode()


def nvmlSystemGetCudaDriverVersion():
    _require_init()
    return SIM_CUDA_DRIVER_VERSION


def nvmlSystemGetCudaDriverVersion_v2():
    _require_init()
    return SIM_CUDA_DRIVER_VERSION


@convertStrBytes
def nvmlSystemGetProcessName(pid):
    _require_init()
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as handle:
            name = handle.read().split(b"\0")[0]
    except OSError:
        name = b""
    if not name:
        _raise(NVML_ERROR_NOT_FOUND)
    return name


# ---------------------------------------------------------------- finding devices


def nvmlDeviceGetCount():
    _require_init()
    return len(_gpus)



def nvmlDeviceGetHandleByIndex(index):
    _require_init()
    index = c_uint(index).value  # as the binding passes it: negative numbers wrap, non-ints raise TypeError
    if index >= len(_gpus):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    gpu = _gpus[index]
    _check_gpu(gpu, "nvmlDeviceGetHandleByIndex")
    return _handle(gpu)


@convertStrBytes
def nvmlDeviceGetHandleByUUID(uuid):
    _require_init()
    wanted = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    if not wanted:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    for gpu in _gpus:
        if gpu.uuid.lower() == wanted.lower():
            _check_gpu(gpu, "nvmlDeviceGetHandleByUUID")
            return _handle(gpu)
    _raise(NVML_ERROR_NOT_FOUND)


def _parse_bus_id(text: str) -> tuple[int, int, int]:
    parts = text.strip().split(":")
    if len(parts) == 2:
        parts = ["0", *parts]
    if len(parts) != 3 or "." not in parts[2]:
        raise ValueError(text)
    device, _, _function = parts[2].partition(".")
    return int(parts[0], 16), int(parts[1], 16), int(device, 16)


@convertStrBytes
def nvmlDeviceGetHandleByPciBusId(pciBusId):
    _require_init()
    try:
        wanted = _parse_bus_id(pciBusId.decode() if isinstance(pciBusId, bytes) else str(pciBusId))
    except ValueError:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    for gpu in _gpus:
        if (gpu.domain, gpu.bus, gpu.device) == wanted:
            _check_gpu(gpu, "nvmlDeviceGetHandleByPciBusId")
            return _handle(gpu)
    _raise(NVML_ERROR_NOT_FOUND)



# ---------------------------------------------------------------- identity


@convertStrBytes
def nvmlDeviceGetName(handle):
    return _gpu_of(handle).name.encode()


@convertStrBytes
def nvmlDeviceGetUUID(handle):
    return _gpu_of(handle).uuid.encode()


@convertStrBytes
def nvmlDeviceGetSerial(handle):
    gpu = _gpu_of(handle)
    if not gpu.model.serial_supported:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return gpu.serial.encode()


@convertStrBytes
def nvmlDeviceGetBoardPartNumber(handle):
    gpu = _gpu_of(handle)
    if gpu.model.part_number is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return gpu.model.part_number.encode()


@convertStrBytes
def nvmlDeviceGetVbiosVersion(handle):
    return _gpu_of(handle).model.vbios.encode()


def nvmlDeviceGetIndex(handle):
    return _gpu_of(handle).index


def nvmlDeviceGetMinorNumber(handle):
    return _gpu_of(handle).minor


def nvmlDeviceGetPciInfo_v3(handle):
    gpu = _gpu_of(handle)
    info = nvmlPciInfo_t()
    info.busIdLegacy = NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT % (gpu.domain, gpu.bus, gpu.device)
    info.domain, info.bus, info.device = gpu.domain, gpu.bus, gpu.device
    info.pciDeviceId, info.pciSubSystemId = gpu.model.pci_device_id, gpu.model.pci_subsystem_id
    info.busId = gpu.bus_id
    return info


def nvmlDeviceGetPciInfo(handle):
    return nvmlDeviceGetPciInfo_v3(handle)


def nvmlDeviceGetBrand(handle):
    return _gpu_of(handle).model.brand


def nvmlDeviceGetArchitecture(handle):
    return _gpu_of(handle).model.architecture


def nvmlDeviceGetCudaComputeCapability(handle):
    return tuple(_gpu_of(handle).model.compute_capability)


# ---------------------------------------------------------------- health readings


def nvmlDeviceGetMemoryInfo(handle, version=None):
    gpu = _gpu_of(handle)
    total, used, free = sim_memory(gpu)
    if not version:
        memory = c_nvmlMemory_t()
        memory.total, memory.free, memory.used = total, free, used
        return memory
    if version != nvmlMemory_v2:
        _raise(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    memory = c_nvmlMemory_v2_t()
    memory.version = version
    reserved = min(gpu.model.reserved, used)
    memory.total, memory.reserved, memory.free, memory.used = total, reserved, free, used - reserved
    return memory


def nvmlDeviceGetUtilizationRates(handle):
    gpu = _gpu_of(handle)
    value = _per_gpu(_read_state(), "utilization", gpu.index) or [0, 0]
    if isinstance(value, dict):
        value = [value.get("gpu", 0), value.get("memory", 0)]
    rates = c_nvmlUtilization_t()
    rates.gpu, rates.memory = int(value[0]), int(value[1])
    return rates


def nvmlDeviceGetTemperature(handle, sensor):
    gpu = _gpu_of(handle)
    if sensor != NVML_TEMPERATURE_GPU:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return int(_per_gpu(_read_state(), "temperature", gpu.index, gpu.model.temperature))


nvmlTemperature_v1 = 0x100000C


def nvmlDeviceGetTemperatureV(handle, sensor, version=nvmlTemperature_v1):
    if version != nvmlTemperature_v1:
        _raise(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    return nvmlDeviceGetTemperature(handle, sensor)


def nvmlDeviceGetTemperatureThreshold(handle, threshold):
    gpu = _gpu_of(handle)
    if not 0 <= threshold < NVML_TEMPERATURE_THRESHOLD_COUNT:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    if threshold not in gpu.model.temperature_thresholds:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return gpu.model.temperature_thresholds[threshold]


def _power(gpu: SimGpu) -> int:
    return int(_per_gpu(_read_state(), "power", gpu.index, gpu.model.power_idle))


def nvmlDeviceGetPowerUsage(handle):
    return _power(_gpu_of(handle))


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return _gpu_of(handle).model.power_limit


def nvmlDeviceGetPowerManagementLimit(handle):
    return _gpu_of(handle).model.power_limit


def nvmlDeviceGetTotalEnergyConsumption(handle):
    """mJ since the driver loaded: the captured counter, then idle power integrated over time."""
    gpu = _gpu_of(handle)
    base = 2541915 if gpu.captured else 1800000 + 10000 * gpu.index
    return int(base + _power(gpu) * (time.monotonic() - _T0))


def nvmlDeviceGetFanSpeed(handle):
    gpu = _gpu_of(handle)
    if gpu.model.fan is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return gpu.model.fan


def nvmlDeviceGetPerformanceState(handle):
    return _gpu_of(handle).model.pstate


def nvmlDeviceGetPowerState(handle):
    return _gpu_of(handle).model.pstate


def nvmlDeviceGetClockInfo(handle, type):
    gpu = _gpu_of(handle)
    if type not in gpu.model.clocks:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return gpu.model.clocks[type]


def nvmlDeviceGetMaxClockInfo(handle, type):
    gpu = _gpu_of(handle)
    if type not in gpu.model.max_clocks:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return gpu.model.max_clocks[type]


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    _gpu_of(handle)
    return nvmlClocksEventReasonGpuIdle


def nvmlDeviceGetCurrentClocksThrottleReasons(handle):
    _gpu_of(handle)
    return nvmlClocksThrottleReasonGpuIdle


def nvmlDeviceGetComputeMode(handle):
    _gpu_of(handle)
    return NVML_COMPUTEMODE_DEFAULT


def nvmlDeviceGetPersistenceMode(handle):
    return _gpu_of(handle).model.persistence


def nvmlDeviceGetDisplayMode(handle):
    return _gpu_of(handle).model.display_mode


def nvmlDeviceGetMigMode(device):
    gpu = _gpu_of(device)
    if gpu.model.mig is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return list(gpu.model.mig)


def nvmlDeviceGetEccMode(handle):
    gpu = _gpu_of(handle)
    if gpu.model.ecc is None:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    return list(gpu.model.ecc)


def nvmlDeviceGetTotalEccErrors(handle, errorType, counterType):
    gpu = _gpu_of(handle)
    if errorType not in (0, 1) or counterType not in (0, 1):
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    if not (gpu.model.ecc and gpu.model.ecc[0]):
        _raise(NVML_ERROR_NOT_SUPPORTED)
    if errorType == NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
        return int(_per_gpu(_read_state(), "ecc_uncorrected", gpu.index, 0))
    return 38695581 if gpu.captured and counterType == NVML_AGGREGATE_ECC else 0


def nvmlDeviceGetRetiredPagesPendingStatus(device):
    _gpu_of(device)
    _raise(NVML_ERROR_NOT_SUPPORTED)  # boards with row remapping (Ampere and later) do not retire pages


def nvmlDeviceGetRemappedRows(device):
    gpu = _gpu_of(device)
    rows = _per_gpu(_read_state(), "remapped_rows", gpu.index)
    if rows is None:
        if gpu.model.remapped_rows is None:
            _raise(NVML_ERROR_NOT_SUPPORTED)
        rows = (2, 0, 0, 0) if gpu.captured else gpu.model.remapped_rows
    return tuple(int(v) for v in rows)


def nvmlDeviceGetSupportedEventTypes(handle):
    return _gpu_of(handle).model.event_types


def _process_list(gpu: SimGpu, state: dict) -> list:
    procs = []
    for pid, mem in _processes(state, gpu):
        info = c_nvmlProcessInfo_t()
        info.pid, info.usedGpuMemory = pid, mem
        info.gpuInstanceId = info.computeInstanceId = _NA_UINT
        procs.append(nvmlStructToFriendlyObject(info))
    return procs


def nvmlDeviceGetComputeRunningProcesses(handle):
    gpu = _gpu_of(handle)
    return _process_list(gpu, _read_state())


nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses
nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    _gpu_of(handle)
    return []


nvmlDeviceGetGraphicsRunningProcesses_v2 = nvmlDeviceGetGraphicsRunningProcesses
nvmlDeviceGetGraphicsRunningProcesses_v3 = nvmlDeviceGetGraphicsRunningProcesses


def nvmlDeviceGetMPSComputeRunningProcesses(handle):
    _gpu_of(handle)
    return []


nvmlDeviceGetMPSComputeRunningProcesses_v2 = nvmlDeviceGetMPSComputeRunningProcesses
nvmlDeviceGetMPSComputeRunningProcesses_v3 = nvmlDeviceGetMPSComputeRunningProcesses


# ---------------------------------------------------------------- events


def _event_set(eventSet) -> _EventSet:
    _require_init()
    if not isinstance(eventSet, c_nvmlEventSet_t) or not eventSet:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    found = _event_sets.get(ctypes.addressof(eventSet.contents))
    if found is None:
        _raise(NVML_ERROR_INVALID_ARGUMENT)
    return found


def nvmlEventSetCreate():
    global _next_set_id
    with _lock:
        _require_init()
        struct = struct_c_nvmlEventSet_t(_next_set_id)
        _next_set_id += 1
        _event_sets[ctypes.addressof(struct)] = _EventSet(struct)
        return ctypes.pointer(struct)


def nvmlDeviceRegisterEvents(handle, eventTypes, eventSet):
    gpu = _gpu_of(handle)
    events = _event_set(eventSet)
    if eventTypes & ~gpu.model.event_types:
        _raise(NVML_ERROR_NOT_SUPPORTED)
    events.registered[gpu.index] = events.registered.get(gpu.index, 0) | int(eventTypes)
    return None


def _next_event(events: _EventSet):
    """The first Xid not yet returned to this set, on a board registered for Xid events; GpuIsLost when lost."""
    state = _read_state()
    lost = {int(i) for i in state.get("lost") or []}
    for index, mask in sorted(events.registered.items()):
        if not mask & nvmlEventTypeXidCriticalError:
            continue
        xids = _per_gpu(state, "xid", index, [])
        xids = [xids] if isinstance(xids, int) else list(xids or [])
        done = events.delivered.get(index, 0)
        if done < len(xids):
            events.delivered[index] = done + 1
            data = c_nvmlEventData_t()
            data.device = _handle(_gpus[index])
            data.eventType = nvmlEventTypeXidCriticalError
            data.eventData = int(xids[done])
            data.gpuInstanceId = data.computeInstanceId = _NA_UINT
            return data
    if lost & set(events.registered):
        _raise(NVML_ERROR_GPU_IS_LOST)
    return None


def nvmlEventSetWait_v2(eventSet, timeoutms):
    """The next pending event, or NVMLError_Timeout after ``timeoutms`` ms (never sleeps longer)."""
    deadline = time.monotonic() + max(0, int(timeoutms)) / 1000.0
    while True:
        with _lock:
            data = _next_event(_event_set(eventSet))
        if data is not None:
            return data
        left = deadline - time.monotonic()
        if left <= 0:
            _raise(NVML_ERROR_TIMEOUT)
        time.sleep(min(0.02, left))


def nvmlEventSetWait(eventSet, timeoutms):
    return nvmlEventSetWait_v2(eventSet, timeoutms)


def nvmlEventSetFree(eventSet):
    with _lock:
        events = _event_set(eventSet)
        _event_sets.pop(ctypes.addressof(events.struct), None)
    return None
