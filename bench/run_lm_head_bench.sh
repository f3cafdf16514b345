#!/usr/bin/env bash
# Peak memory and time of a DPO step with the language-model head whole against in
# vocabulary chunks (runtime.vocab_chunk), on a Gemma-shaped small model (256k vocabulary),
# each variant in its own process; the whole head is the anchor, and the chunked variants'
# loss and gradients are checked to agree with it before any ratio is printed.
#   bench/run_lm_head_bench.sh [BUILD_DIR]   (env: PAIRS PROMPT RESPONSE THREADS CHUNKS)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
PAIRS=${PAIRS:-2} PROMPT=${PROMPT:-128} RESPONSE=${RESPONSE:-256} THREADS=${THREADS:-2}
CHUNKS=${CHUNKS:-0,32768,8192}
out=$("$BUILD/bench/lm_head_memory" --pairs "$PAIRS" --prompt "$PROMPT" --response "$RESPONSE" \
  --threads "$THREADS" --chunks "$CHUNKS")
echo "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
variants = [r for r in rows if "step_peak_mib" in r]
base = variants[0]
for s in (r for r in rows if "peak_ratio" in r):
    # float32 either way; only the order of sums differs (log-sum-exp over chunks, dh summed
    # over chunks), so the loss and gradient norms agree to ~1e-6 relative.
    assert s["loss_rel_diff"] < 1e-4 and s["grad_norm_rel_diff"] < 1e-4, s
    v = next(r for r in variants if r["vocab_chunk"] == s["vocab_chunk"])
    print(f"vocab_chunk {v['vocab_chunk']}: step peak {v['step_peak_mib']:.0f} MiB vs "
          f"{base['step_peak_mib']:.0f} MiB whole ({s['peak_ratio']:.2f}x), step "
          f"{v['step_s']:.2f} s vs {base['step_s']:.2f} s ({s['time_ratio']:.2f}x), "
          f"{v['response_tokens']} response tokens x {v['vocab']} vocabulary")
PY
