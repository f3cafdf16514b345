#!/usr/bin/env python3
"""Golden greedy continuations for rmgen's generation parity test, from transformers' generate.

Same pinned environment as tests/parity/generate.py (torch 2.7.1, transformers 4.46.3). It
reads the tiny checkpoints generate.py wrote (tests/parity/golden/models/<family>-lm), so run
that first if they are missing; then, from the repository root:

    /opt/rmgen-py/bin/python tests/parity/generate_decode.py

and it writes tests/parity/golden/decode.json: per family, prompts of different lengths and
transformers' greedy continuation of each (fp32, eager attention, its KV cache, one prompt a
call, stopping at EOS id 2 or after 16 new tokens), plus the max |logit| gap between the
best and second-best token at every step, so a test can tell a true mismatch from a near tie.
Mistral's sliding window (8) is shorter than every prompt plus its continuation.
"""
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
VOCAB = 256
EOS = 2
MAX_NEW = 16
PROMPT_LENGTHS = [3, 9, 14, 6, 1]


def main():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(4242)
    prompts = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]
    out = {"transformers": transformers.__version__, "torch": torch.__version__,
           "max_new_tokens": MAX_NEW, "eos_token_id": EOS, "families": {}}
    for family in ("llama", "mistral", "gemma"):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.join(GOLDEN, "models", f"{family}-lm"), torch_dtype=torch.float32,
            attn_implementation="eager").eval()
        rows = []
        for p in prompts:
            ids = torch.tensor([p])
            with torch.no_grad():
                res = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=MAX_NEW, eos_token_id=EOS, pad_token_id=0,
                                     output_scores=True, return_dict_in_generate=True)
            cont = res.sequences[0, len(p):].tolist()
            gaps = []
            for s in res.scores:
                top2 = torch.topk(s[0].float(), 2).values
                gaps.append(float(top2[0] - top2[1]))
            rows.append({"prompt": p, "continuation": cont, "top2_gap": gaps})
        out["families"][family] = rows
    with open(os.path.join(GOLDEN, "decode.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
