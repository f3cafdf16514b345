#!/usr/bin/env python3
"""Python twin of bench/data_pipeline.cc: json.loads + the Zephyr template + TRL-style
tokenization (prompt alone, prompt + chosen, prompt + rejected; EOS appended; BOS once) of a
`pairs` JSONL file. Two tokenizers: Hugging Face's fast tokenizer (what TRL runs) and the
sentencepiece package, both on the same tokenizer.model. Prints one JSON line per variant,
with the total token count so both sides can be checked against rmgen's."""
import argparse
import json
import time

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--tokenizer", required=True)
ap.add_argument("--variant", choices=["hf", "sentencepiece"], default="hf")
args = ap.parse_args()


def zephyr(messages):
    return "".join(f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages) + "<|assistant|>\n"


if args.variant == "hf":
    from transformers import LlamaTokenizerFast
    tok = LlamaTokenizerFast(vocab_file=args.tokenizer, legacy=True, from_slow=True,
                             add_prefix_space=True)
    encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
else:
    import re
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=args.tokenizer)
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)}
    pattern = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len,
                                                                       reverse=True)) + ")")

    def encode(text):
        out = []
        for part in pattern.split(text):
            if part in specials:
                out.append(specials[part])
            elif part:
                out.extend(sp.encode(part))
        return out
    bos, eos = sp.bos_id(), sp.eos_id()

t0 = time.perf_counter()
pairs = tokens = 0
with open(args.input) as f:
    for line in f:
        rec = json.loads(line)
        prompt = zephyr(rec["prompt"])
        prompt_ids = encode(prompt)
        for side in ("chosen", "rejected"):
            resp = "".join(m["content"] for m in rec[side])
            full = encode(prompt + resp)
            start = len(prompt_ids)
            if full[:start] != prompt_ids:
                start -= 1
            seq = ([bos] if full[:1] != [bos] else []) + full + [eos]
            tokens += len(seq)
        pairs += 1
s = time.perf_counter() - t0
print(json.dumps({"impl": f"python-{args.variant}", "threads": 1, "pairs": pairs,
                  "tokens": tokens, "seconds": round(s, 3), "pairs_per_s": round(pairs / s, 1)}))
