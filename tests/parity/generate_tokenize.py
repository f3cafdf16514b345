#!/usr/bin/env python3
"""Golden file for rmgen's pair tokenization (TokenizePair), from TRL 0.9.6's DPOTrainer.

Pinned versions (the semantics matched): trl 0.9.6 (DPOTrainer.tokenize_row of the study's
era: the prompt is a string already rendered with the chat template, the responses raw
strings), transformers 4.46.3, tokenizers 0.20.3, sentencepiece 0.2.x. Why 0.9.6: it is the
last DPOTrainer whose joint prompt + response encoding keeps a token that merges across the
prompt/response boundary (0.10 and 0.11 move the split one token earlier without
recomputing the response ids, so the merged token is lost: "Hello wor" + "ld peace" loses
"world"); it adds BOS only when missing (0.8 always did, doubling Gemma's <bos>) and EOS only
when the response does not already end with it (0.8 always did). TRL 0.9.6 is installed on
its own, without dependencies, next to the virtualenv of generate.py (whose trl 0.13.0 has
another tokenization: it applies the chat template itself), and put first on sys.path:

    /opt/rmgen-py/bin/pip install --no-deps --target /opt/trl096 trl==0.9.6
    /opt/rmgen-py/bin/pip install protobuf   # LlamaTokenizerFast's conversion from .model

then, from the repository root (CPU only, about a second):

    /opt/rmgen-py/bin/python tests/parity/generate_tokenize.py [--trl /opt/trl096]

What it runs: TRL 0.9.6's DPOTrainer.tokenize_row (build_tokenized_answer's joint prompt +
response encoding and split, BOS/EOS when needed, truncation, labels), called as an unbound
method with a stand-in for the trainer holding what it reads: max_length 64,
max_prompt_length 24, truncation_mode "keep_end", label_pad_token_id -100. Prompts are
rendered by transformers' apply_chat_template(add_generation_prompt=True) with the Jinja
templates of generate.py; responses are the raw assistant text.

Tokenizers and templates (tests/fixtures/tokenizers/):
  mistral-7b-v0.1 + zephyr  the Mistral SentencePiece model as LlamaTokenizerFast (legacy,
                            add_prefix_space: the normalizer of Mistral's tokenizer.json;
                            see generate.py); the slow LlamaTokenizer must give the same ids
  mistral-7b-v0.1 + none    plain prompts, no template: where the joint encoding merges the
                            prompt's last token with the response's first
  toy-gemma + gemma         the toy Gemma vocabulary (GemmaTokenizer) with Gemma-it's
                            template (it emits <bos>, so no BOS is added). Gemma's template
                            renders {{ bos_token }}: with the Mistral tokenizer that is <s>, not
                            the <bos> text rmgen's gemma template writes, so the Gemma template is
                            only meaningful with a Gemma vocabulary.

It writes tests/parity/golden/tokenize_pairs.json: per case the messages, the rendered
prompt and the responses' text, and TRL's output: prompt_input_ids, chosen_input_ids,
rejected_input_ids and the prompt lengths (the -100 labels at the start of chosen_labels and
rejected_labels), and whether TRL truncated the prompt or the responses (its output against a
run with no length limit). Rerunning it rewrites the file identically.
"""
import argparse
import json
import os
import sys
from types import MethodType, SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(HERE, "golden")
TOKENIZERS = os.path.join(ROOT, "tests", "fixtures", "tokenizers")
sys.path.insert(0, HERE)

SETTINGS = {"max_length": 64, "max_prompt_length": 24, "truncation_mode": "keep_end",
            "label_pad_token_id": -100}


def words(n, stem="word"):
    return " ".join(f"{stem}{i}" for i in range(n))


def user(text):
    return [{"role": "user", "content": text}]


def pair(name, prompt, chosen, rejected):
    return {"name": name, "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


MULTI_TURN = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "What is 2+2?"},
              {"role": "assistant", "content": "4."},
              {"role": "user", "content": "  And 3+3?\n"}]
GEMMA_MULTI_TURN = MULTI_TURN[1:]
SHORT_MULTI_TURN = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Q?"}]

ZEPHYR_CASES = [
    pair("short", user("Hello there"), "General Kenobi!", "Who?"),
    pair("multi_turn", SHORT_MULTI_TURN, "A.", "Answer: none"),
    pair("multi_turn_with_system", MULTI_TURN, "6.", "Six, I think."),
    pair("leading_space", user("Say something."), " leading space and trailing ", "no space"),
    pair("leading_punctuation", user("Continue the list"), ", and then the rest.", "!Wow"),
    pair("leading_digit_dot", user("What is a half?"), ".5 is the answer", "0.5"),
    pair("leading_newline", user("Make a list"), "\nList:\n- a\n- b", "\n\n"),
    pair("special_inside_response", user("Quote it"), "before </s> after <s> end", "plain"),
    pair("unicode", user("Résumé en français : « café »"), "naïve 日本語 😀", "—"),
    pair("empty_response", user("Say nothing"), "", "Something."),
    pair("long_prompt", user(words(60)), "Yes.", "No."),
    pair("long_response", user("Count"), words(70, "n"), "Short."),
    pair("long_prompt_and_response", MULTI_TURN[:3] + user(words(40, "q")), words(50, "a"),
         words(10, "b")),
    pair("response_ends_with_eos_text", user("End it"), "Done.</s>", "Not done."),
]
PLAIN_CASES = [
    pair("merge_across_boundary", user("Hello wor"), "ld peace", "ld."),
    pair("digits_merge", user("The answer is 4"), "2.", " 2."),
    pair("no_merge", user("The answer is"), " 42.", " seven"),
    pair("long_plain", user(words(50)), words(30, "r"), "x"),
]
GEMMA_CASES = [
    pair("short", user("Hello there"), "General Kenobi!", "Who?"),
    pair("multi_turn", SHORT_MULTI_TURN, "A.", "Answer: none"),
    pair("multi_turn_long", GEMMA_MULTI_TURN, "6.", "Six, I think."),
    pair("leading_space", user("  padded prompt  "), " leading space", "none"),
    pair("leading_newline", user("Make a list"), "\nList:\n- a", "\n"),
    pair("long_prompt", user(words(40)), "Yes.", "No."),
    pair("long_response", user("Count"), words(50, "n"), "Short."),
]


def tokenizers():
    from transformers import GemmaTokenizer, LlamaTokenizer, LlamaTokenizerFast
    mistral_path = os.path.join(TOKENIZERS, "mistral-7b-v0.1", "tokenizer.model")
    fast = LlamaTokenizerFast(vocab_file=mistral_path, legacy=True, from_slow=True,
                              add_prefix_space=True)
    slow = LlamaTokenizer(vocab_file=mistral_path, legacy=True)
    gemma = GemmaTokenizer(vocab_file=os.path.join(TOKENIZERS, "toy-gemma", "tokenizer.model"))
    return fast, slow, gemma


def render(tok, template, messages):
    if template is None:
        return "".join(m["content"] for m in messages)
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=True)


def trl_tokenize(tokenize, tok, prompts, chosen, rejected, settings):
    """TRL 0.9.6's DPOTrainer.tokenize_row on each row, with a stand-in for the trainer holding
    what it reads (its tokenizer, lengths, truncation mode, label pad id)."""
    from trl import DPOTrainer
    me = SimpleNamespace(tokenizer=tok, is_encoder_decoder=False, is_vision_model=False,
                         processor=None, **settings)
    me.build_tokenized_answer = MethodType(DPOTrainer.build_tokenized_answer, me)
    return [tokenize(me, {"prompt": p, "chosen": c, "rejected": r})
            for p, c, r in zip(prompts, chosen, rejected)]


def prompt_len(labels):
    n = 0
    while n < len(labels) and labels[n] == -100:
        n += 1
    return n


def run(tokenize, name, template_name, template, toks, cases):
    tok = toks[0]
    prompts = [render(tok, template, c["prompt"]) for c in cases]
    chosen = [c["chosen"][0]["content"] for c in cases]
    rejected = [c["rejected"][0]["content"] for c in cases]
    rows = trl_tokenize(tokenize, tok, prompts, chosen, rejected, SETTINGS)
    for other in toks[1:]:  # the slow tokenizer gives the same ids
        assert [render(other, template, c["prompt"]) for c in cases] == prompts
        assert trl_tokenize(tokenize, other, prompts, chosen, rejected, SETTINGS) == rows, name
    unlimited = trl_tokenize(tokenize, tok, prompts, chosen, rejected,
                             dict(SETTINGS, max_length=10**6, max_prompt_length=10**6))
    out = []
    for c, p, row, full in zip(cases, prompts, rows, unlimited):
        # TRL's labels mask exactly the prompt of each side.
        for side in ("chosen", "rejected"):
            n = prompt_len(row[f"{side}_labels"])
            assert row[f"{side}_labels"][n:] == row[f"{side}_input_ids"][n:]
        out.append({
            "name": f"{template_name}/{c['name']}", "tokenizer": name, "template": template_name,
            "prompt": c["prompt"], "chosen": c["chosen"], "rejected": c["rejected"],
            "prompt_text": p, "chosen_text": c["chosen"][0]["content"],
            "rejected_text": c["rejected"][0]["content"],
            "trl": {"prompt_input_ids": row["prompt_input_ids"],
                    "chosen_input_ids": row["chosen_input_ids"],
                    "rejected_input_ids": row["rejected_input_ids"],
                    "chosen_prompt_len": prompt_len(row["chosen_labels"]),
                    "rejected_prompt_len": prompt_len(row["rejected_labels"]),
                    "prompt_truncated": any(
                        prompt_len(row[f"{s}_labels"]) < prompt_len(full[f"{s}_labels"])
                        for s in ("chosen", "rejected")),
                    "response_truncated": any(
                        len(row[f"{s}_input_ids"]) - prompt_len(row[f"{s}_labels"]) <
                        len(full[f"{s}_input_ids"]) - prompt_len(full[f"{s}_labels"])
                        for s in ("chosen", "rejected"))}})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trl", default="/opt/trl096", help="where trl 0.9.6 is installed")
    ap.add_argument("--out", default=os.path.join(GOLDEN, "tokenize_pairs.json"))
    args = ap.parse_args()
    sys.path.insert(0, args.trl)
    import transformers
    import trl
    assert trl.__version__ == "0.9.6", (trl.__version__, trl.__file__)
    from trl import DPOTrainer
    _tokenize = DPOTrainer.tokenize_row
    from generate import GEMMA_TEMPLATE, ZEPHYR_TEMPLATE

    transformers.logging.set_verbosity_error()
    fast, slow, gemma = tokenizers()
    cases = (run(_tokenize, "mistral-7b-v0.1", "zephyr", ZEPHYR_TEMPLATE, (fast, slow),
                 ZEPHYR_CASES) +
             run(_tokenize, "mistral-7b-v0.1", "none", None, (fast, slow), PLAIN_CASES) +
             run(_tokenize, "toy-gemma", "gemma", GEMMA_TEMPLATE, (gemma,), GEMMA_CASES))
    golden = {"versions": {"trl": trl.__version__, "transformers": transformers.__version__},
              "trl_function": "trl.DPOTrainer.tokenize_row (0.9.6)",
              "settings": SETTINGS, "cases": cases}
    with open(args.out, "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for c in cases:
        t = c["trl"]
        print(f"{c['name']:45s} prompt {t['chosen_prompt_len']:3d}/{t['rejected_prompt_len']:3d} "
              f"len {len(t['chosen_input_ids']):3d}/{len(t['rejected_input_ids']):3d}"
              f"{' prompt-cut' if t['prompt_truncated'] else ''}"
              f"{' response-cut' if t['response_truncated'] else ''}")


if __name__ == "__main__":
    sys.exit(main())
