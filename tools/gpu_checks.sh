#!/usr/bin/env bash
# The checks that need a CUDA GPU, one stage per command, each well inside 10 minutes on an H100.
#
#   bash tools/gpu_checks.sh STAGE [OUT_DIR]
#
# STAGE
#   tests          pytest -m gpu: bf16 autocast, fused AdamW, compile + EMA, LoRA in bf16 (~1 min)
#   engine         issue 3: tinyshakespeare_char in bf16 + torch.compile for 750 iterations, then
#                  resumed to 1000; prints tokens/s, MFU and peak memory from summary.json (~2 min)
#   throughput     issue 7.1: bench_throughput.py, GPT-2 124M shape, batches 12,16,24,32 (~5 min)
#   memory         issue 7.4: GPT-2 350M at block 1024 with and without activation checkpointing
#   time-to-loss   issue 7.2: bench_time_to_loss.py, rows $ROWS (default "ours") (~3 min a row)
#   finetune       issue 8: LoRA fine-tune of a tiny random Llama in bf16 on CUDA, then sample
#
# Tables and logs go to OUT_DIR (default: $OUT on the project's GPU machine, else ./gpu_checks).
# Python: $PYTHON, else .venv/bin/python if present, else python3. Our missing dependencies come
# from .device/wheels (tools/gpu_carry.sh gathers them) and the Shakespeare text from
# .device/data/ or ../shared/data/.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?usage: bash tools/gpu_checks.sh tests|engine|throughput|memory|time-to-loss|finetune [OUT_DIR]}
out=${2:-${OUT:-gpu_checks}}
mkdir -p "$out"
py=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1

if ! "$py" -c "import pydantic, tomli_w" 2>/dev/null; then
    [[ -d .device/wheels ]] || { echo "missing dependencies: run tools/gpu_carry.sh here first" >&2; exit 2; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/ml_playground_site .device/wheels/*.whl
    export PYTHONPATH=/tmp/ml_playground_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
data=.device/data/tinyshakespeare.txt
[[ -f $data ]] || data=../shared/data/tinyshakespeare.txt
work=$(mktemp -d)
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$out/device.txt"

summary() {  # summary.json → one line with the numbers the issues ask for
    "$py" - "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
mfu = s.get("mfu")
print(f"iters {s['iters']}  best val {s['best_val_loss']}  tokens/s {s['tokens_per_s']:,.0f}  "
      f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}  peak memory {s.get('peak_memory_mb')} MB  "
      f"wall {s['wall_s']:.1f} s")
EOF
}

steady() {  # metrics.jsonl → the median tokens/s recorded at the evaluations after iteration 100
    "$py" - "$1" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
rates = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s") and r["iter"] > 100]
print(f"steady-state tokens/s (median over the {len(rates)} evaluations after iter 100): "
      f"{statistics.median(rates):,.0f}" if rates else "no evaluation after iter 100")
EOF
}

case $stage in
tests)
    "$py" -m pytest -q -m gpu tests 2>&1 | tee "$out/gpu_tests.log"
    ;;
engine)
    # EXTRA="KEY=VALUE ..." adds overrides (e.g. a tiny model and train.device=cpu to smoke-test).
    read -ra extra <<< "${EXTRA:-}"
    run=(tinyshakespeare_char "data.path=$data" "${extra[@]}" --workdir "$work")
    "$py" -m ml_playground prepare "${run[@]}"
    "$py" -m ml_playground train "${run[@]}" train.max_iters=750 2>&1 | tee "$out/engine_750.log"
    cp "$work/runs/tinyshakespeare_char/main/summary.json" "$out/engine_summary_750.json"
    "$py" -m ml_playground train "${run[@]}" train.max_iters=1000 2>&1 | tee "$out/engine_1000.log"
    cp "$work/runs/tinyshakespeare_char/main/summary.json" "$out/engine_summary_1000.json"
    cp "$work/runs/tinyshakespeare_char/main/metrics.jsonl" "$out/engine_metrics.jsonl"
    grep -q "resum" "$out/engine_1000.log" || { echo "FAIL: the second train did not resume" >&2; exit 1; }
    { echo "first 750:  $(summary "$out/engine_summary_750.json")"
      echo "resumed to 1000: $(summary "$out/engine_summary_1000.json")"
      steady "$out/engine_metrics.jsonl"
      echo "(summary.json's tokens/s and MFU average each whole session, compilation included)"
    } | tee "$out/engine.txt"
    ;;
throughput)
    "$py" benchmarks/bench_throughput.py --batches "${BATCHES:-12,16,24,32}" 2>&1 | tee "$out/throughput.md"
    ;;
memory)
    "$py" benchmarks/bench_throughput.py --preset gpt2_350m --batches "${BATCHES:-16,32,48}" \
        --checkpointing both --steps 5 --repeats 3 2>&1 | tee "$out/memory.md"
    ;;
time-to-loss)
    "$py" benchmarks/bench_time_to_loss.py --data "$data" --rows "${ROWS:-ours}" --workdir "$work" \
        --json-out "$out/time_to_loss.json" 2>&1 | tee "$out/time_to_loss.md"
    ;;
finetune)
    "$py" - "$work/tiny_llama" "$work/corpus.txt" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests/unit/finetune")
from tiny_hf import sample_text, save_tiny_model
save_tiny_model(Path(sys.argv[1]), "llama")
Path(sys.argv[2]).write_text(sample_text(lines=2000), "utf-8")
EOF
    # DEVICE=cpu DTYPE=float32 runs the same stage on a CPU (a smoke test of this script).
    run=(tiny_hf_lora "hf.model=$work/tiny_llama" "data.path=$work/corpus.txt"
         "train.device=${DEVICE:-cuda}" "train.dtype=${DTYPE:-bfloat16}" train.max_iters=200
         train.eval_interval=50 --workdir "$work")
    "$py" -m ml_playground finetune "${run[@]}" 2>&1 | tee "$out/finetune.log"
    "$py" -m ml_playground sample "${run[@]}" --temperature 0 2>&1 | tee -a "$out/finetune.log"
    summary "$work/runs/tiny_hf_lora/main/summary.json" | tee "$out/finetune.txt"
    ;;
*)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
esac
