#!/usr/bin/env bash
# GPU smoke check: real NVML, the simulated ComfyUI, one slot (GPU 0), for a machine with an NVIDIA GPU.
# Prints what NVML says of GPU 0 (name, UUID, driver), the CUDA_VISIBLE_DEVICES the supervisor gave its
# ComfyUI child, and the device that child reports; then stops the supervisor with SIGTERM.
#   bash deploy/gpu-smoke.sh            (PYTHON=... to choose the interpreter)
#   SMOKE_FAKE_GPUS=2 bash deploy/gpu-smoke.sh   rehearses the script without a GPU (simulated NVML)
# The packages of requirements.txt must be importable by $PYTHON (a machine without network: bring
# wheels and `pip install --no-index`); otherwise the script tries to make a venv from PyPI.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python3}
if ! "$PY" -c "import requests, websocket, boto3, psutil, pynvml, click, yaml, aiohttp" 2>/dev/null; then
  "$PY" -m venv /tmp/gpu-smoke-venv && /tmp/gpu-smoke-venv/bin/pip install -q -r requirements.txt || exit 1
  PY=/tmp/gpu-smoke-venv/bin/python
fi
gpus=real
if [ -n "${SMOKE_FAKE_GPUS:-}" ]; then
  export PYTHONPATH="$root/worker/sim/pynvml_shim:$root" SIM_NVML_GPUS="$SMOKE_FAKE_GPUS"
  gpus=$SMOKE_FAKE_GPUS
fi
work=$(mktemp -d)
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/config.yaml" <<YAML
api: {url: "http://127.0.0.1:9", secret: smoke-secret, poll_interval: 60}
gpus: [0]
cpu_fallback: false
comfy: {command: ["$PY", -m, worker.sim.comfyui], cwd: "$root", base_port: $port, work_dir: "$work/slots",
        env: {PYTHONPATH: "$root", SIM_NVML_GPUS: "$gpus"}, startup_timeout: 60}
supervisor: {sentinel_file: "", stop_grace: 5}
YAML

echo "== NVML (as the supervisor sees it)"
"$PY" - <<'PY'
import pynvml
pynvml.nvmlInit()
h = pynvml.nvmlDeviceGetHandleByIndex(0)
print("driver", pynvml.nvmlSystemGetDriverVersion(), "| GPUs", pynvml.nvmlDeviceGetCount())
print("GPU 0 name", pynvml.nvmlDeviceGetName(h), "| uuid", pynvml.nvmlDeviceGetUUID(h),
      "| memory total", pynvml.nvmlDeviceGetMemoryInfo(h).total)
PY

"$PY" supervisor.py --config "$work/config.yaml" >"$work/supervisor.log" 2>&1 &
sup=$!
for _ in $(seq 1 300); do
  grep -q "ComfyUI ready at\|FATAL" "$work/supervisor.log" && break
  sleep 0.2
done
comfy_pid=$(sed -n 's/.*gpu0: started ComfyUI (pid \([0-9]*\)).*/\1/p' "$work/supervisor.log" | head -n 1)
echo "== ComfyUI child (pid ${comfy_pid:-none})"
if [ -n "$comfy_pid" ] && [ -r "/proc/$comfy_pid/environ" ]; then
  pin=$(tr '\0' '\n' <"/proc/$comfy_pid/environ" | sed -n 's/^CUDA_VISIBLE_DEVICES=//p')
  echo "CUDA_VISIBLE_DEVICES=$pin"
  echo "== what CUDA itself shows a process with that pin (libcuda through ctypes)"
  CUDA_VISIBLE_DEVICES="$pin" "$PY" - <<'PY'
import ctypes
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    print("libcuda not available here:", exc)
else:
    count = ctypes.c_int()
    print("cuInit", cuda.cuInit(0), "| cuDeviceGetCount", cuda.cuDeviceGetCount(ctypes.byref(count)), "->", count.value)
    if count.value:
        dev, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
        cuda.cuDeviceGet(ctypes.byref(dev), 0)
        cuda.cuDeviceGetUuid(raw, dev)
        h = bytes(raw).hex()
        print(f"cuda:0 uuid GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
try:
    import pynvml
    pynvml.nvmlInit()
    print("MIG mode (current, pending):", pynvml.nvmlDeviceGetMigMode(pynvml.nvmlDeviceGetHandleByIndex(0)))
except Exception as exc:
    print("MIG mode unreadable:", type(exc).__name__, exc)
PY
  "$PY" -c "import json, requests; print('system_stats devices', json.dumps(requests.get('http://127.0.0.1:$port/system_stats', timeout=5).json()['devices']))"
fi
kill -TERM "$sup"
wait "$sup"
code=$?
echo "== supervisor log (exit code $code)"
grep -E "GPU 0|gpu0|READY|FATAL|Supervisor stopped" "$work/supervisor.log"
[ "$code" -eq 0 ] && grep -q "ComfyUI ready at" "$work/supervisor.log"
