#!/usr/bin/env bash
# The GPU check, in one call: build rmgen-train against a CUDA libtorch 2.x + NCCL, run the
# `gpu` tests (NCCL collectives; the flash kernels over variable-length segments and the
# chunked language-model head against the CPU paths), then the study's shapes: EXRM and DPO
# (cached reference) steps on the Gemma-2B and Mistral-7B shapes (random init, bf16 weights,
# bf16 autocast; 7B with gradient checkpointing) at per-device batch 8 and up through BATCHES
# until one does not fit, on the synthetic suite with UltraFeedback-like lengths (`rmgen data
# synth --lengths ultrafeedback`, truncated at MAX_LENGTH / MAX_LENGTH/4 = 512 / 128), each
# reporting tokens/s, MFU, the allocator's peak and the share of step time per phase
# (runtime.profile); and a generate job (KV cache, bf16) reporting new tokens/s.
#
#   bench/gpu/run.sh              on a machine with an NVIDIA GPU, CUDA, NCCL and a CUDA
#                                 libtorch 2.x (the `torch` wheel's, or LIBTORCH_PREFIX)
#   bench/gpu/run.sh --dry-run    anywhere: the same steps on CPU with the existing build
#                                 (BUILD, default build/) and a tiny Gemma-shaped model
#
# Other build dependencies (yaml-cpp, SentencePiece, nlohmann-json, OpenMPI, GoogleTest) come
# from the system, or from a folder of extracted Debian packages made by bench/gpu/bundle.sh
# (SYSROOT, default bench/gpu/sysroot) when the GPU machine lacks them. The GPU build is
# rank-only (RMGEN_WITH_SERVICE=OFF), so the synthetic data comes from DATA, made beforehand
# with `rmgen data synth --out DIR --train 512 --validation 32 --shifted 32 --lengths
# ultrafeedback` (bundle.sh does). On the lent device: bench/gpu/device.sh.
#
# MFU = (6 * params + 12 * layers * heads * head_dim * seq_len) * tokens/s / peak, counting
# real (unpadded) tokens; peak bf16 dense FLOP/s from the GPU's name (H100 SXM 989e12,
# H200 989e12, A100 312e12) or PEAK_TFLOPS. Env: STEPS (6), BATCHES ("8 16 32 64"), CONFIGS
# (the two model configs), MAX_LENGTH (512), OUT (a temp folder): results land in
# OUT/gpu-report.json.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/../.."
DRY=0
if [[ ${1:-} == --dry-run ]]; then DRY=1; fi
STEPS=${STEPS:-6} MAX_LENGTH=${MAX_LENGTH:-512} FUSED_COMPARE=${FUSED_COMPARE:-1}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
SYSROOT=${SYSROOT:-bench/gpu/sysroot}
log() { echo "[gpu-check] $*" >&2; }

if [[ $DRY == 1 ]]; then
  BUILD=${BUILD:-build}
  DEVICE=cpu CONFIG=configs/models/tiny-gemma.json PEAK=${PEAK_TFLOPS:-1}
  CONFIGS=${CONFIGS:-$CONFIG} BATCHES=${BATCHES:-"8 16"} BATCHES_7B=${BATCHES_7B:-8}
  STEPS=${STEPS_DRY:-3} MAX_LENGTH=128
  [[ -x $BUILD/worker/train/rmgen-train ]] || { log "dry run needs a build in $BUILD"; exit 1; }
  log "dry run: CPU, $CONFIG, build $BUILD"
else
  BUILD=${BUILD:-build-gpu}
  DEVICE=cuda CONFIG=configs/models/gemma-2b.json
  CONFIGS=${CONFIGS:-"configs/models/gemma-2b.json configs/models/mistral-7b.json"}
  BATCHES=${BATCHES:-"8 16 32 64"} BATCHES_7B=${BATCHES_7B:-8}
  command -v nvidia-smi >/dev/null || { log "no nvidia-smi: not a GPU machine (use --dry-run)"; exit 1; }
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  case "$GPU" in
    *H100* | *H200*) PEAK=${PEAK_TFLOPS:-989} ;;
    *A100*) PEAK=${PEAK_TFLOPS:-312} ;;
    *) PEAK=${PEAK_TFLOPS:?unknown GPU "$GPU": set PEAK_TFLOPS} ;;
  esac
  log "GPU: $GPU (peak bf16 ${PEAK} TFLOP/s)"
  PREFIX=${LIBTORCH_PREFIX:-$(${PYTHON:-python3} -c 'import torch; print(torch.utils.cmake_prefix_path)')}
  if [[ -d $SYSROOT ]]; then
    SR=$(cd "$SYSROOT" && pwd)
    PREFIX="$PREFIX;$SR/usr"
    export PATH="$SR/usr/bin:$PATH" PKG_CONFIG_PATH="$SR/usr/lib/x86_64-linux-gnu/pkgconfig:$SR/usr/share/pkgconfig"
    export LD_LIBRARY_PATH="$SR/usr/lib/x86_64-linux-gnu:$SR/usr/lib:${LD_LIBRARY_PATH:-}"
    export CPATH="$SR/usr/include:${CPATH:-}" LIBRARY_PATH="$SR/usr/lib/x86_64-linux-gnu:${LIBRARY_PATH:-}"
    export OPAL_PREFIX="$SR/usr"
  fi
  # NCCL: CUDA's prefix, else the nvidia-nccl wheel that comes with the torch wheel.
  NCCL_ARGS=()
  if [[ ! -f /usr/local/cuda/include/nccl.h ]]; then
    ND=$(${PYTHON:-python3} -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null || true)
    NL=$(ls "$ND"/lib/libnccl.so* 2>/dev/null | head -1 || true)
    if [[ -n $ND && -f $ND/include/nccl.h && -n $NL ]]; then
      NCCL_ARGS=(-DNCCL_INCLUDE_DIR="$ND/include" -DNCCL_LIBRARY="$NL")
      export LD_LIBRARY_PATH="$ND/lib:${LD_LIBRARY_PATH:-}"
      log "NCCL from the wheel: $NL"
    fi
  fi
  # Rank-only build: no gRPC, protobuf or SQLite needed on the GPU machine.
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX" \
    "${NCCL_ARGS[@]}" -DRMGEN_BUILD_BENCH=OFF -DRMGEN_WITH_SERVICE=OFF >"$OUT/cmake.log" 2>&1 ||
    { tail -30 "$OUT/cmake.log"; exit 1; }
  grep -E "rmgen: CUDA|rmgen: fused|Torch" "$OUT/cmake.log" >&2 || true
  cmake --build "$BUILD" -j"$(nproc)" --target rmgen-train comm_test nccl_gpu_test varlen_gpu_test \
    optim_gpu_test fused_ops_gpu_test \
    >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi

log "gpu tests"
ctest --test-dir "$BUILD" -L gpu --output-on-failure | tee "$OUT/ctest-gpu.log" | tail -5

# The synthetic suite: DATA (made elsewhere with `rmgen data synth`, for a rank-only build),
# else made here.
if [[ -n ${DATA:-} ]]; then
  mkdir -p "$OUT/data" && cp -r "$DATA"/. "$OUT/data/"
else
  "$BUILD/client/rmgen" data synth --out "$OUT/data" --seed 0 --train 512 --validation 32 \
    --shifted 32 --lengths ultrafeedback >/dev/null 2>&1
fi
# Training steps at the study's shapes: per model, EXRM and DPO (cached reference) at each
# per-device batch of BATCHES (8 first) until one does not fit (the run fails with
# out_of_memory), each with runtime.profile (the step's phases, device synchronized) and
# STEPS steps; the first step (warm-up) is left out of the rates.
run_train() {  # model-config kind batch [fused] -> 0 ok, 1 failed (the cause in its log)
  local config=$1 kind=$2 batch=$3 fused=${4:-false} name
  name=$(basename "$config" .json)-$kind-b$batch
  [[ $fused == true ]] && name=$name-fused
  local ckpt=false
  [[ $config == *7b* ]] && ckpt=true
  cat >"$OUT/$name.yaml" <<YAML
kind: $kind
model: {config: $config, dtype: bfloat16}
tokenizer: $OUT/data/tokenizer.model
template: zephyr
data: {catalog: $OUT/data/datasets.yaml, train: "synth-id:train", limit: $((batch * STEPS)), max_length: $MAX_LENGTH, max_prompt_length: $((MAX_LENGTH / 4))}
train: {batch_size: $batch, learning_rate: 0.00001, max_steps: $STEPS, bf16: true, gradient_checkpointing: $ckpt}
dpo: {beta: 0.1, reference_cache: $OUT/ref-cache}
runtime: {device: $DEVICE, log_every: 1, profile: true, fused_kernels: $fused}
YAML
  log "$name: $STEPS steps"
  "$BUILD/worker/train/rmgen-train" --spec "$OUT/$name.yaml" --out "$OUT/$name" --quiet \
    >"$OUT/$name.log" 2>&1
}
for config in $CONFIGS; do
  batches=$BATCHES
  [[ $config == *7b* ]] && batches=$BATCHES_7B
  for kind in reward dpo; do
    for batch in $batches; do
      if ! run_train "$config" "$kind" "$batch"; then
        log "$(basename "$config" .json) $kind batch $batch failed: $(tail -1 "$OUT/$(basename "$config" .json)-$kind-b$batch.log")"
        break
      fi
    done
  done
done
# The fused kernels (runtime.fused_kernels) at the first config's batch 8, against the rows above.
if [[ $FUSED_COMPARE == 1 ]]; then
  first=${CONFIGS%% *}
  for kind in reward dpo; do
    run_train "$first" "$kind" 8 true || log "$(basename "$first" .json) $kind fused failed"
  done
fi

# Generation (KV cache) from the same shape: GEN_PROMPTS prompts x 4 samples, GEN_TOKENS new
# tokens at most, batch GEN_BATCH sequences.
GEN_PROMPTS=${GEN_PROMPTS:-64} GEN_TOKENS=${GEN_TOKENS:-128} GEN_BATCH=${GEN_BATCH:-64}
[[ $DRY == 1 ]] && GEN_PROMPTS=8 GEN_TOKENS=16 GEN_BATCH=8
cat >"$OUT/generate.yaml" <<YAML
kind: generate
model: {config: $CONFIG, dtype: bfloat16}
tokenizer: $OUT/data/tokenizer.model
template: zephyr
data: {catalog: $OUT/data/datasets.yaml, prompts: "synth-id:train", limit: $GEN_PROMPTS}
generate: {samples: 4, max_new_tokens: $GEN_TOKENS, batch_size: $GEN_BATCH, seed: 1}
runtime: {device: $DEVICE}
YAML
log "generate: $GEN_PROMPTS prompts x 4 samples, up to $GEN_TOKENS new tokens"
"$BUILD/worker/train/rmgen-train" --spec "$OUT/generate.yaml" --out "$OUT/generate" --quiet \
  2>&1 | tail -5

python3 - "$OUT" "$PEAK" "$DEVICE" "$CONFIGS" "$BATCHES" "$BATCHES_7B" <<'PY'
import json, os, sys
out, peak, device = sys.argv[1], float(sys.argv[2]) * 1e12, sys.argv[3]
configs, batches = sys.argv[4].split(), sorted(set(sys.argv[5].split() + sys.argv[6].split()), key=int)
report = {"device": device, "peak_flops": peak, "train": {}}
for config in configs:
    c = json.load(open(config))
    layers, heads = c["num_hidden_layers"], c["num_attention_heads"]
    head_dim = c.get("head_dim", c["hidden_size"] // heads)
    model = os.path.basename(config)[:-5]
    rows = report["train"].setdefault(model, {})
    runs = [(kind, b, "") for kind in ("reward", "dpo") for b in batches]
    runs += [(kind, "8", "-fused") for kind in ("reward", "dpo")]
    for kind, batch, suffix in runs:
        run = f"{out}/{model}-{kind}-b{batch}{suffix}"
        if suffix and not os.path.exists(run):
            continue
        if not os.path.exists(f"{run}/metrics.json"):
            if os.path.exists(f"{run}.log"):
                tail = open(f"{run}.log").read().strip().splitlines()[-1:]
                rows[f"{kind}/b{batch}{suffix}"] = {"failed": tail[0] if tail else "?"}
            continue
        m = json.load(open(f"{run}/metrics.json"))
        ev = [json.loads(l) for l in open(f"{run}/events.jsonl")]
        steady = ev[1:] or ev  # the first step carries allocator and kernel warm-up
        tok_s = sorted(e["tokens/s"] for e in steady)[len(steady) // 2]
        pairs_s = sorted(e["pairs/s"] for e in steady)[len(steady) // 2]
        seq = tok_s / pairs_s / 2  # mean real tokens per sequence (chosen and rejected)
        params = m["train"]["params"]
        flops_per_token = 6 * params + 12 * layers * heads * head_dim * seq
        phases = {}
        for e in steady:
            for k, v in e.get("phase_s", {}).items():
                phases[k] = phases.get(k, 0.0) + v
        total = sum(phases.values()) or 1.0
        rows[f"{kind}/b{batch}{suffix}"] = {
            "params": params, "tokens_per_s": tok_s, "step_s": float(batch) / pairs_s,
            "mean_seq_len": seq, "mfu": flops_per_token * tok_s / peak,
            "device_peak_mb": m["train"].get("device_peak_mb"),
            "peak_rss_mb": ev[-1]["peak_rss_mb"],
            "phase_share": {k: v / total for k, v in phases.items()},
            "final_loss": m["train"]["final"]["loss"]}
    # The issue's ratio: a DPO step (cached reference) against an EXRM step, per batch.
    for batch in batches:
        r, d = rows.get(f"reward/b{batch}", {}), rows.get(f"dpo/b{batch}", {})
        if "step_s" in r and "step_s" in d:
            rows[f"dpo_over_reward/b{batch}"] = d["step_s"] / r["step_s"]
g = json.load(open(f"{out}/generate/metrics.json"))["generate"]
report["generate"] = {"new_tokens": g["new_tokens"], "seconds": g["seconds"],
                      "tokens_per_s": g["tokens_per_s"], "finish": g["finish"]}
json.dump(report, open(f"{out}/gpu-report.json", "w"), indent=2)
for model, rows in report["train"].items():
    for key, r in rows.items():
        if isinstance(r, dict) and "mfu" in r:
            share = " ".join(f"{k} {v:.0%}" for k, v in r["phase_share"].items())
            mem = r["device_peak_mb"] if r["device_peak_mb"] is not None else r["peak_rss_mb"]
            print(f"{model} {key}: {r['tokens_per_s']:.0f} tokens/s, MFU {r['mfu']:.1%}, "
                  f"{r['mean_seq_len']:.0f} tokens/seq, peak {mem:.0f} MB; {share}")
        elif isinstance(r, dict):
            print(f"{model} {key}: failed ({r['failed']})")
        else:
            print(f"{model} {key}: {r:.2f}")
print(f"generate: {report['generate']['tokens_per_s']:.0f} new tokens/s")
PY
log "report: $OUT/gpu-report.json"
