#!/usr/bin/env bash
# Rehearse bench/gpu_check.py on this machine with the GPU machine's Python stack, before a GPU session spends time.
#
#   bash bench/rehearse_device.sh [OUT]        # OUT: where the dry run writes results.json/.md (default runs/rehearsal)
#
# Builds a clean venv (no site packages of this machine) holding what the device image holds that gpu_check needs:
# Triton 3.6.0 and transformers 5.17.0 (the device's versions), huggingface_hub, safetensors, numpy, pillow, regex,
# requests, filelock, pyyaml; torch is the local CPU wheel (TORCH_WHEEL; the device has torch 2.11+cu130). Then the
# wheels README's device command carries (diffusers, importlib_metadata) are downloaded and installed exactly as that
# command does (--no-index --no-deps --target), and the dry run runs through the Triton interpreter with
# PYTHONPATH=<target>:<repo>, as on the device. The venv is reused when it exists (REHEARSAL_VENV to move it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$ROOT/runs/rehearsal}
VENV=${REHEARSAL_VENV:-/tmp/linfuse-rehearsal/venv}
WORK=$(dirname "$VENV")
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -1)}
PYTHON=${REHEARSAL_PYTHON:-python3}
DEVICE_PACKAGES=(triton==3.6.0 transformers==5.17.0 huggingface_hub safetensors numpy pillow regex requests filelock
                 pyyaml)
# Triton 3.6's interpreter converts its scalars with int() on 1-element arrays, an error from NumPy 2.4 on (fixed in
# later Triton: .squeeze()). The device has NumPy 2.5 but never interprets (its kernels compile); the dry run here
# needs NumPy < 2.4 to interpret under Triton 3.6.
INTERPRETER_NUMPY="numpy<2.4"
CARRIED=(diffusers==0.42.1 importlib_metadata)  # README's "GPU check" download line

if [ ! -x "$VENV/bin/python" ]; then
    [ -n "$TORCH_WHEEL" ] || { echo "TORCH_WHEEL: no local torch CPU wheel found; set TORCH_WHEEL=path" >&2; exit 2; }
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$TORCH_WHEEL"
    "$VENV/bin/python" -m pip install -q "${DEVICE_PACKAGES[@]}"
fi
"$VENV/bin/python" -m pip install -q "$INTERPRETER_NUMPY"
WHL=$WORK/whl SITE=$WORK/site
rm -rf "$WHL" "$SITE" && mkdir -p "$WHL"
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$WHL" "${CARRIED[@]}"
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHL"/*.whl
"$VENV/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -iE "^(torch|triton|transformers|huggingface.hub|safetensors|numpy|diffusers)==" || true
ls "$SITE" | grep -i dist-info
cd "$ROOT"
# The device runs python3 with PYTHONPATH=/tmp/site:$PWD; gradio, peft, accelerate are absent here as they may be there.
env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="${HOME:-/root}" PYTHONPATH="$SITE:$ROOT" PYTHONUNBUFFERED=1 \
    TRITON_INTERPRET=1 "$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "triton", "diffusers", "transformers", "safetensors", "linfuse.kernels", "linfuse"):
    try:
        module = importlib.import_module(name)
        print(f"import {name}: ok {getattr(module, '__version__', '')}")
    except Exception as error:  # noqa: BLE001  (the rehearsal reports every import)
        print(f"import {name}: FAILED {type(error).__name__}: {error}")
PY
env -i PATH="$VENV/bin:/usr/bin:/bin" HOME="${HOME:-/root}" PYTHONPATH="$SITE:$ROOT" PYTHONUNBUFFERED=1 \
    TRITON_INTERPRET=1 "$VENV/bin/python" bench/gpu_check.py --dry-run --out "$OUT" "${@:2}"
