#!/usr/bin/env python3
"""Golden files for rmgen's model and tokenizer parity tests, from Hugging Face transformers.

Pinned versions (the semantics matched): torch 2.7.1, transformers 4.46.3,
sentencepiece 0.2.0, safetensors 0.4.5. Install them in a virtualenv:

    python3 -m venv /opt/rmgen-py
    /opt/rmgen-py/bin/pip install torch==2.7.1 transformers==4.46.3 sentencepiece==0.2.0 \
        safetensors==0.4.5 "numpy<2.2"

then, from the repository root (after building, so the round trip can run rmgen-model):

    /opt/rmgen-py/bin/python tests/parity/generate.py --rmgen-model build/worker/model/rmgen-model

What it writes under tests/parity/golden/ (all small; committed):
  models/<family>-lm/   tiny random *ForCausalLM checkpoints in Hugging Face layout:
                        llama fp32 single file, mistral fp16 sharded (sliding window 8 <
                        sequence length), gemma bf16 (tied head, multi-query, head_dim != d/H)
  models/<family>-rm/   the same bodies as *ForSequenceClassification (num_labels 1)
  <family>.safetensors  input_ids, attention_mask, response_mask (right padded, pad id not in
                        the text), logits (fp32, eager attention), logps (summed response
                        log-probs, TRL's convention), scores (reward head)
  tokenizer.json        chat-templated conversations and their ids from the transformers
                        tokenizers (Mistral with the Zephyr template; toy Gemma with Gemma-it's)
  roundtrip.json        rmgen-saved checkpoints loaded back in transformers: max |diff| of
                        logits and scores against rmgen's own forward pass

Rerunning it rewrites everything identically (fixed seeds).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                          GemmaConfig, GemmaTokenizer, LlamaConfig, LlamaTokenizer,
                          LlamaTokenizerFast, MistralConfig)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(HERE, "golden")
TOKENIZERS = os.path.join(ROOT, "tests", "fixtures", "tokenizers")

VOCAB = 256
PAD = 0  # never used inside a sequence, so transformers' pad search equals rmgen's mask pooling
B, T = 3, 24
LENGTHS = [24, 19, 13]
PROMPT_LENGTHS = [9, 7, 5]

# Gemma-it's and Zephyr's chat templates, as their checkpoints ship them.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must "
    "alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == "
    "'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\n'}}{% endif %}")
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + "
    "message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ "
    "'<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == "
    "'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif "
    "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif "
    "%}\n{% endfor %}")


def family_configs():
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, rope_theta=10000.0,
                  pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    return {
        "llama": (LlamaConfig(intermediate_size=176, num_key_value_heads=2, rms_norm_eps=1e-5,
                              tie_word_embeddings=False, **common), torch.float32, None),
        "mistral": (MistralConfig(intermediate_size=176, num_key_value_heads=2,
                                  rms_norm_eps=1e-5, sliding_window=8,
                                  tie_word_embeddings=False, **common),
                    torch.float16, "60KB"),
        "gemma": (GemmaConfig(intermediate_size=256, num_key_value_heads=1, head_dim=32,
                              rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                              **common), torch.bfloat16, None),
    }


def make_inputs(gen):
    ids = torch.randint(3, VOCAB, (B, T), generator=gen)
    mask = torch.zeros(B, T, dtype=torch.int64)
    resp = torch.zeros(B, T, dtype=torch.int64)
    for b, (n, p) in enumerate(zip(LENGTHS, PROMPT_LENGTHS)):
        mask[b, :n] = 1
        resp[b, p:n] = 1
        ids[b, n:] = PAD
    return ids, mask, resp


def summed_logps(logits, ids, resp):
    """TRL's get_batch_logps: sum over response tokens of log_softmax(logits[t-1])[ids[t]]."""
    labels = ids[:, 1:]
    lp = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    return (lp * resp[:, 1:]).sum(-1)


def randomize_norms(model, gen):
    # transformers initialises RMSNorm weights to a constant; random values test the
    # family's (1 + w) / w handling for real.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (0.0 if "gemma" in
                        type(model).__name__.lower() else 1.0))


def build_models(out_models):
    goldens = {}
    for family, (cfg, dtype, shard) in family_configs().items():
        cfg._attn_implementation = "eager"
        torch.manual_seed(1000 + len(goldens))
        gen = torch.Generator().manual_seed(2000 + len(goldens))
        lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        randomize_norms(lm, gen)
        lm_dir = os.path.join(out_models, f"{family}-lm")
        lm.to(dtype).save_pretrained(lm_dir, safe_serialization=True,
                                     **({"max_shard_size": shard} if shard else {}))
        rm_dict = {k: v for k, v in cfg.to_dict().items() if k not in ("id2label", "label2id")}
        rm_cfg = type(cfg)(**rm_dict, num_labels=1)
        rm = AutoModelForSequenceClassification.from_config(rm_cfg, attn_implementation="eager")
        rm.model.load_state_dict(lm.model.state_dict())
        rm_dir = os.path.join(out_models, f"{family}-rm")
        rm.to(dtype).save_pretrained(rm_dir, safe_serialization=True)

        # Goldens come from the stored weights, computed in fp32.
        lm = AutoModelForCausalLM.from_pretrained(lm_dir, torch_dtype=torch.float32,
                                                  attn_implementation="eager").eval()
        rm = AutoModelForSequenceClassification.from_pretrained(
            rm_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        ids, mask, resp = make_inputs(gen)
        with torch.no_grad():
            logits = lm(input_ids=ids, attention_mask=mask).logits.float()
            scores = rm(input_ids=ids, attention_mask=mask).logits.float().squeeze(-1)
        g = {"input_ids": ids, "attention_mask": mask, "response_mask": resp,
             "logits": logits.contiguous(), "logps": summed_logps(logits, ids, resp),
             "scores": scores.contiguous()}
        save_file(g, os.path.join(GOLDEN, f"{family}.safetensors"))
        goldens[family] = g
        print(f"{family}: lm {lm_dir} ({dtype}), rm {rm_dir}")
    return goldens


CONVERSATIONS = [
    [{"role": "user", "content": "Hello! How are you?"}],
    [{"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4."},
     {"role": "user", "content": "  And 3+3?\n"}],
    [{"role": "user", "content": "Résumé en français : « café » — naïve 日本語 😀"}],
    [{"role": "user", "content": "Line one\nLine two\n\n  indented\ttab"},
     {"role": "assistant", "content": " leading space and trailing "},
     {"role": "user", "content": "</s> inside text <s> too"}],
    [{"role": "user", "content": ""}],
]
SYSTEM_CONVERSATION = [{"role": "system", "content": "You are terse."},
                       {"role": "user", "content": "Name a prime."}]


def build_tokenizer_golden():
    out = {"transformers": transformers.__version__, "cases": []}
    mistral_path = os.path.join(TOKENIZERS, "mistral-7b-v0.1", "tokenizer.model")
    slow = LlamaTokenizer(vocab_file=mistral_path, legacy=True)
    # The fast tokenizer with the normalizer Mistral's tokenizer.json ships
    # (Prepend("▁") + Replace(" ", "▁")); without add_prefix_space the conversion from the
    # .model file drops the Prepend and disagrees with both.
    fast = LlamaTokenizerFast(vocab_file=mistral_path, legacy=True, from_slow=True,
                              add_prefix_space=True)
    for conv in CONVERSATIONS + [SYSTEM_CONVERSATION]:
        for gen_prompt in (False, True):
            text = slow.apply_chat_template(conv, chat_template=ZEPHYR_TEMPLATE, tokenize=False,
                                            add_generation_prompt=gen_prompt)
            ids = slow(text)["input_ids"]  # the tokenizer adds <s>
            assert ids == fast(text)["input_ids"], ("slow and fast disagree", text)
            out["cases"].append({"tokenizer": "mistral-7b-v0.1", "template": "zephyr",
                                 "messages": conv, "generation_prompt": gen_prompt,
                                 "text": text, "ids": ids})
    gemma_path = os.path.join(TOKENIZERS, "toy-gemma", "tokenizer.model")
    gemma = GemmaTokenizer(vocab_file=gemma_path)
    for conv in CONVERSATIONS:
        for gen_prompt in (False, True):
            text = gemma.apply_chat_template(conv, chat_template=GEMMA_TEMPLATE, tokenize=False,
                                             add_generation_prompt=gen_prompt)
            ids = gemma(text, add_special_tokens=False)["input_ids"]  # template has <bos>
            out["cases"].append({"tokenizer": "toy-gemma", "template": "gemma",
                                 "messages": conv, "generation_prompt": gen_prompt,
                                 "text": text, "ids": ids})
    # Plain text, no template, no special tokens.
    for s in ["Hello world", " leading space", "tabs\tand\nnewlines", "数字 123 😀"]:
        out["cases"].append({"tokenizer": "mistral-7b-v0.1", "template": "none",
                             "messages": [{"role": "user", "content": s}],
                             "generation_prompt": False, "text": s,
                             "ids": slow(s, add_special_tokens=False)["input_ids"]})
    with open(os.path.join(GOLDEN, "tokenizer.json"), "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"tokenizer: {len(out['cases'])} cases")


def roundtrip(rmgen_model, goldens, out_models):
    """rmgen loads each HF checkpoint, saves it again; transformers loads rmgen's save."""
    record = {"torch": torch.__version__, "transformers": transformers.__version__,
              "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family, g in goldens.items():
            rec = {}
            for head, loader, key in (("lm", AutoModelForCausalLM, "logits"),
                                      ("reward", AutoModelForSequenceClassification, "scores")):
                src = os.path.join(out_models, f"{family}-{'lm' if head == 'lm' else 'rm'}")
                dst = os.path.join(tmp, f"{family}-{head}")
                subprocess.run([rmgen_model, "convert", "--in", src, "--out", dst, "--head",
                                head], check=True)
                inputs = os.path.join(tmp, "inputs.safetensors")
                save_file({k: g[k] for k in ("input_ids", "attention_mask", "response_mask")},
                          inputs)
                outp = os.path.join(tmp, f"{family}-{head}-out.safetensors")
                subprocess.run([rmgen_model, "forward", "--model", dst, "--inputs", inputs,
                                "--out", outp, "--head", head, "--threads", "1"], check=True)
                ours = load_file(outp)[key]
                model = loader.from_pretrained(dst, torch_dtype=torch.float32,
                                               attn_implementation="eager").eval()
                with torch.no_grad():
                    theirs = model(input_ids=g["input_ids"],
                                   attention_mask=g["attention_mask"]).logits.float()
                if head == "reward":
                    theirs = theirs.squeeze(-1)
                valid = g["attention_mask"].bool() if head == "lm" else slice(None)
                diff = (ours[valid] - theirs[valid]).abs().max().item()
                rec[head] = {"architecture": model.config.architectures[0],
                             "max_abs_diff_vs_transformers": diff}
                assert diff <= 1e-4, (family, head, diff)
            record["families"][family] = rec
            print(f"roundtrip {family}: {rec}")
    with open(os.path.join(GOLDEN, "roundtrip.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rmgen-model", default=os.path.join(ROOT, "build", "worker", "model",
                                                          "rmgen-model"))
    ap.add_argument("--skip-roundtrip", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out_models = os.path.join(GOLDEN, "models")
    shutil.rmtree(out_models, ignore_errors=True)
    os.makedirs(out_models)
    goldens = build_models(out_models)
    build_tokenizer_golden()
    if not args.skip_roundtrip:
        roundtrip(args.rmgen_model, goldens, out_models)


if __name__ == "__main__":
    sys.exit(main())
