#!/usr/bin/env python3
"""transformers' generate (its KV cache, greedy, no stop token unless --stop) on the checkpoint, prompts,
batch and threads generate_bench uses; one JSON line like generate_bench's. Prompts of a batch
are left-padded, as transformers requires for batched generation; the shortest prompts are
batched together on both sides."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--stop", type=int, default=-1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32,
                                                 attn_implementation=a.attn).eval()
    prompts = json.load(open(a.prompts))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = []
    for s in range(0, len(order), a.batch):
        idx = order[s:s + a.batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        batches.append((idx, ids, mask))
    best, total, outs = 1e30, 0, {}
    for rep in range(a.repeat + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            for idx, ids, mask in batches:
                stops = dict(eos_token_id=a.stop) if a.stop >= 0 else dict(
                    eos_token_id=None, min_new_tokens=a.new)
                res = model.generate(ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=a.new, pad_token_id=0, **stops)
                if rep == 0:
                    for r, i in enumerate(idx):
                        toks = res[r, ids.shape[1]:].tolist()
                        if a.stop >= 0 and a.stop in toks:  # what follows is padding
                            toks = toks[:toks.index(a.stop) + 1]
                        outs[i] = toks
        s = time.perf_counter() - t0
        if rep == 0:
            continue
        best = min(best, s)
    digest = 0
    for i in range(len(prompts)):
        total += len(outs[i])
        for t in outs[i]:
            digest = (digest * 1000003 + t) % (1 << 64)
    print(json.dumps({"impl": f"transformers-{a.attn}", "threads": a.threads, "batch": a.batch,
                      "new_tokens": total, "seconds": best, "tokens_per_s": total / best,
                      "digest": str(digest)}))


if __name__ == "__main__":
    main()
