#!/usr/bin/env python3
"""PyTorch-eager twin of bench/model_fwd_bwd.cc: transformers' LlamaForCausalLM on the
weights and batch that model_fwd_bwd wrote with --save-dir, same loss (mean negative
log-prob of every token but the first), same thread count. Prints one JSON line."""
import argparse
import json
import time

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--steps", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = AutoModelForCausalLM.from_pretrained(args.dir, torch_dtype=torch.float32,
                                             attn_implementation=args.attn)
model.train()  # dropout is 0 in these configs
ids = load_file(f"{args.dir}/batch.safetensors")["input_ids"]
B, T = ids.shape


def step():
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    lp = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, ids[:, 1:].unsqueeze(2))
    loss = -lp.sum() / (B * (T - 1))
    loss.backward()
    return loss.item()


for _ in range(args.warmup):
    step()
t0 = time.perf_counter()
for _ in range(args.steps):
    loss = step()
s = time.perf_counter() - t0
print(json.dumps({"impl": f"transformers-{args.attn}", "torch": torch.__version__,
                  "transformers": transformers.__version__, "threads": args.threads,
                  "batch": B, "seq": T, "loss": round(loss, 6), "step_s": round(s / args.steps, 4),
                  "tokens_per_s": round(B * T * args.steps / s, 1)}))
