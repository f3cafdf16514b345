#!/usr/bin/env python3
"""TRL twin of rmgen-train for bench/run_train_bench.sh: a fixed number of optimizer steps of
TRL's RewardTrainer (EXRM, Bradley-Terry loss) or DPOTrainer (sigmoid loss) on a `pairs` JSONL
file, from a Hugging Face checkpoint folder, on CPU, fp32. Prints ONE JSON line.

  bench/train_trl.py --kind reward|dpo [--precompute] --model DIR --data train.jsonl \
      --tokenizer tokenizer.model [--threads 2] [--batch 8] [--steps 20] [--warmup 3]
      [--eval-data validation.jsonl --eval-batch 16]

Variants (the "impl" field): trl-reward; trl-dpo (a resident reference model, a second copy
loaded from the same checkpoint and passed to DPOTrainer explicitly); trl-dpo-precomputed
(DPOConfig.precompute_ref_log_probs=True with that same explicit reference: TRL runs the
reference over the whole train set once inside get_train_dataloader(), before the first
step; that pass is reported separately as "precompute_s" and is NOT in "seconds").

Settings: per-device batch B, gradient accumulation 1, lr 1e-5 with the linear schedule and
no warm-up, AdamW (torch), max_grad_norm 1.0, fp32, seed 0, dataloader_num_workers 0,
logging every step (to memory only: report_to none, no tqdm, the
log printer removed), no eval, no saving, no dropout,
max_length 512, max_prompt_length 128 (DPO), torch.set_num_threads(N).

Data: records {"prompt": [messages], "chosen": [messages], "rejected": [messages]} with the
Zephyr chat template set on the (sentencepiece) tokenizer. DPO gets the explicit prompt form. TRL 0.13's
RewardTrainer tokenizes only the "chosen"/"rejected" columns (with an explicit "prompt" it
would score the responses alone), so for EXRM the prompt messages are prepended to both
responses (TRL's implicit-prompt form): the reward model then sees prompt + response, as in
rmgen.

Timing (exact): a TrainerCallback takes time.perf_counter() at every on_step_begin and
on_step_end. transformers 4.46 fetches (and collates) a step's batch BEFORE on_step_begin,
and logs the step AFTER on_step_end, so the headline number is the end-to-end wall time
    seconds = t_end[steps] - t_end[warmup]
i.e. the steps warmup+1 .. steps, each interval covering batch fetch + collate, forward,
backward, clipping, AdamW, scheduler, zero_grad and the previous step's logging: everything
the training loop does per step. "inner_step_s" is the mean on_step_begin->on_step_end time
of the same steps (no fetch/collate, no logging). "pairs" and "tokens" are counted by
wrapping the trainer's data collator (the k-th collated training batch feeds step k;
batches collated by the precompute pass are not counted): "tokens" are real (unpadded)
tokens the model runs on, "padded_tokens" the tensor cells including padding.

Validation: exits non-zero unless global_step == --steps and the log history holds one
finite "loss" per step.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--kind", choices=["reward", "dpo"], required=True)
ap.add_argument("--precompute", action="store_true", help="dpo: precompute_ref_log_probs=True")
ap.add_argument("--model", required=True, help="Hugging Face checkpoint folder")
ap.add_argument("--data", required=True, help="pairs JSONL (prompt/chosen/rejected messages)")
ap.add_argument("--tokenizer", required=True, help="sentencepiece tokenizer.model")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
ap.add_argument("--eval-data", help="pairs JSONL to evaluate after training (trainer.evaluate)")
ap.add_argument("--eval-batch", type=int, default=16)
args = ap.parse_args()
if not 1 <= args.warmup < args.steps:
    sys.exit("need 1 <= --warmup < --steps")
if args.precompute and args.kind != "dpo":
    sys.exit("--precompute is a DPO mode")

import torch  # noqa: E402  (after argument parsing: --help stays fast)

torch.set_num_threads(args.threads)

import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,  # noqa: E402
                          LlamaTokenizer, TrainerCallback)
from transformers.trainer_callback import PrinterCallback, ProgressCallback  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.set_seed(0)

# Zephyr: "<|role|>\n{content}</s>\n" per message, "<|assistant|>\n" as the generation prompt.
# A raw string: the \n escapes are Jinja's, so the template's block whitespace cannot leak in.
ZEPHYR = (r"{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '</s>\n' }}"
          r"{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")

# The sentencepiece-backed tokenizer: it applies the model's own normalization (nmt_nfkc:
# a newline becomes a space), as rmgen's tokenizer does, so both sides train on the same
# token sequences. (The fast tokenizer's conversion drops that normalizer and spends
# byte tokens on every newline: about 30% more tokens per pair on this data.)
tok = LlamaTokenizer(vocab_file=args.tokenizer, legacy=True)
tok.pad_token = "<pad>" if "<pad>" in tok.get_vocab() else tok.eos_token
tok.chat_template = ZEPHYR
probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
assert tok.apply_chat_template(probe, tokenize=False, add_generation_prompt=True) == \
    "<|user|>\na</s>\n<|assistant|>\nb</s>\n<|assistant|>\n", "chat template renders wrongly"

def pairs_dataset(path):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if args.kind == "reward":  # implicit prompt: see the docstring
                rows.append({"chosen": r["prompt"] + r["chosen"],
                             "rejected": r["prompt"] + r["rejected"]})
            else:
                rows.append({"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]})
    return Dataset.from_list(rows)  # in memory: no cache files


train_set = pairs_dataset(args.data)
eval_set = pairs_dataset(args.eval_data) if args.eval_data else None


def no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for k in ("attention_dropout", "hidden_dropout", "dropout"):
        if hasattr(model.config, k):
            setattr(model.config, k, 0.0)
    return model


def load(cls, **kw):
    m = cls.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation=args.attn, **kw)
    m.config.pad_token_id = tok.pad_token_id
    return no_dropout(m)


scratch = tempfile.TemporaryDirectory(prefix="trl-bench-")  # removed at exit
common = dict(
    output_dir=scratch.name,  # required by TrainingArguments; nothing is written there
    per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
    learning_rate=1e-5, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
    max_grad_norm=1.0, optim="adamw_torch", max_steps=args.steps, seed=0, data_seed=0,
    logging_strategy="steps", logging_steps=1, save_strategy="no", eval_strategy="no",
    report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    dataloader_pin_memory=False, use_cpu=True, bf16=False, fp16=False, group_by_length=False,
    max_length=512, per_device_eval_batch_size=args.eval_batch,
)


class StepClock(TrainerCallback):
    def __init__(self):
        self.begin, self.end = [], []

    def on_step_begin(self, a, state, control, **kw):
        self.begin.append(time.perf_counter())

    def on_step_end(self, a, state, control, **kw):
        self.end.append(time.perf_counter())


class BatchCounter:
    """Wraps a collator; records (pairs, real tokens, padded cells) per training batch."""

    def __init__(self, inner, kind, max_length):
        self.inner, self.kind, self.max_length = inner, kind, max_length
        self.batches = []
        self.recording = True

    def __call__(self, features):
        out = self.inner(features)
        if not self.recording:
            return out
        if self.kind == "reward":
            mc, mr = out["attention_mask_chosen"], out["attention_mask_rejected"]
            self.batches.append((mc.shape[0], int(mc.sum() + mr.sum()), mc.numel() + mr.numel()))
        else:
            # DPOTrainer.concatenated_forward runs 2B rows of prompt + completion, left-flushed
            # and trimmed to the longest row (at most max_length).
            pm, cm, rm = (out[k] for k in ("prompt_attention_mask", "chosen_attention_mask",
                                           "rejected_attention_mask"))
            lc, lr = pm.sum(1) + cm.sum(1), pm.sum(1) + rm.sum(1)
            T = min(int(torch.maximum(lc, lr).max()), self.max_length)
            self.batches.append((pm.shape[0], int(lc.clamp(max=T).sum() + lr.clamp(max=T).sum()),
                                 2 * pm.shape[0] * T))
        return out


class ResetOnTrainBegin(TrainerCallback):
    def __init__(self, counter, clock):
        self.counter, self.clock = counter, clock

    def on_train_begin(self, a, state, control, **kw):
        self.counter.batches.clear()  # drops the batches of the precompute pass
        self.clock.begin.clear()
        self.clock.end.clear()


if args.kind == "reward":
    from trl import RewardConfig, RewardTrainer
    model = load(AutoModelForSequenceClassification, num_labels=1)
    config = RewardConfig(**common, remove_unused_columns=False)
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_set,
                            eval_dataset=eval_set, processing_class=tok)
    impl = "trl-reward"
else:
    from trl import DPOConfig, DPOTrainer

    class TimedDPOTrainer(DPOTrainer):
        """Measures get_train_dataloader() and get_eval_dataloader(), where
        precompute_ref_log_probs does its passes."""
        precompute_s = eval_precompute_s = 0.0

        def get_train_dataloader(self):
            t0 = time.perf_counter()
            dl = super().get_train_dataloader()
            self.precompute_s += time.perf_counter() - t0
            return dl

        def get_eval_dataloader(self, eval_dataset=None):
            t0 = time.perf_counter()
            dl = super().get_eval_dataloader(eval_dataset)
            self.eval_precompute_s += time.perf_counter() - t0
            return dl

    model = load(AutoModelForCausalLM)
    ref_model = load(AutoModelForCausalLM)
    config = DPOConfig(**common, beta=args.beta, loss_type="sigmoid", label_smoothing=0.0,
                       max_prompt_length=128, precompute_ref_log_probs=args.precompute,
                       precompute_ref_batch_size=args.batch, disable_dropout=True)
    trainer = TimedDPOTrainer(model=model, ref_model=ref_model, args=config,
                              train_dataset=train_set, eval_dataset=eval_set,
                              processing_class=tok)
    impl = "trl-dpo-precomputed" if args.precompute else "trl-dpo"

clock = StepClock()
counter = BatchCounter(trainer.data_collator, args.kind, 512)
trainer.data_collator = counter
trainer.add_callback(clock)
for quiet in (PrinterCallback, ProgressCallback):  # no per-step printing (rmgen runs --quiet)
    trainer.remove_callback(quiet)
trainer.add_callback(ResetOnTrainBegin(counter, clock))
trainer.train()

losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
problems = []
if trainer.state.global_step != args.steps:
    problems.append(f"global_step {trainer.state.global_step} != {args.steps}")
if len(losses) != args.steps or not all(math.isfinite(x) for x in losses):
    problems.append(f"expected {args.steps} finite losses, got {losses}")
if len(clock.end) != args.steps or len(counter.batches) < args.steps:
    problems.append(f"{len(clock.end)} step ends, {len(counter.batches)} batches")
if problems:
    sys.exit(f"{impl}: invalid run: {'; '.join(problems)}")

W, S = args.warmup, args.steps
seconds = clock.end[S - 1] - clock.end[W - 1]
inner = sum(clock.end[i] - clock.begin[i] for i in range(W, S))
timed = counter.batches[W:S]
pairs = sum(b[0] for b in timed)
record = {
    "impl": impl, "trl": trl.__version__, "transformers": transformers.__version__,
    "torch": torch.__version__, "attn": model.config._attn_implementation,
    "threads": args.threads, "batch": args.batch, "steps": S, "warmup": W, "timed_steps": S - W,
    "pairs": pairs, "seconds": round(seconds, 4), "pairs_per_s": round(pairs / seconds, 3),
    "step_s": round(seconds / (S - W), 5), "inner_step_s": round(inner / (S - W), 5),
    "tokens": sum(b[1] for b in timed), "padded_tokens": sum(b[2] for b in timed),
    "loss_first": losses[0], "loss_last": losses[-1], "losses_finite": True,
    "load1": round(os.getloadavg()[0], 2),
}
if args.kind == "dpo" and args.precompute:
    record["precompute_s"] = round(trainer.precompute_s, 3)
if eval_set is not None:
    # The trained model scores the eval set: RewardTrainer.evaluate (two forward passes per
    # batch, chosen and rejected), DPOTrainer.evaluate (the implicit reward; with
    # precompute_ref_log_probs the reference pass runs inside get_eval_dataloader and is
    # excluded, as rmgen's cached reference is).
    # RewardTrainer.evaluate first prints a table of 4 samples (an extra batch); the scoring
    # pass is transformers' Trainer.evaluate, called directly. Stdout stays JSON only.
    run_eval = transformers.Trainer.evaluate if args.kind == "reward" else type(trainer).evaluate
    counter.recording = False  # the eval batches go through the same collator
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        out = run_eval(trainer)
    eval_s = time.perf_counter() - t0 - getattr(trainer, "eval_precompute_s", 0.0)
    acc = out.get("eval_accuracy", out.get("eval_rewards/accuracies"))
    record.update({"eval_pairs": len(eval_set), "eval_seconds": round(eval_s, 4),
                   "eval_pairs_per_s": round(len(eval_set) / eval_s, 3),
                   "eval_accuracy": None if acc is None else round(float(acc), 4)})
print(json.dumps(record), flush=True)
