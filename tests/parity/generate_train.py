#!/usr/bin/env python3
"""Golden files for rmgen's training-step parity tests (reward model and DPO), from TRL.

Pinned versions (the semantics matched): trl 0.13.0, torch 2.7.1, transformers 4.46.3,
safetensors 0.4.5. The goldens match TRL 0.13.0's RewardTrainer.compute_loss and
DPOTrainer (concatenated_forward, dpo_loss with loss_type "sigmoid", get_batch_loss_metrics).
Why 0.13.0: it declares transformers>=4.46.0 and its compute_loss takes the
num_items_in_batch argument that transformers 4.46's Trainer passes (trl 0.11.x does not,
so its Trainer.train() fails on 4.46); trl 0.12.x declares transformers<4.47 but its DPO
concatenated_forward cuts one real column too many when the flushed-left batch has an empty
column (huggingface/trl#2330, fixed in 0.13.0), which this batch has. Apart from that fix,
0.12.2 and 0.13.0 compute the same reward/DPO losses and metrics.
Install into the virtualenv of generate.py, keeping its pins:

    /opt/rmgen-py/bin/pip install trl==0.13.0 torch==2.7.1 transformers==4.46.3 \
        tokenizers==0.20.3 safetensors==0.4.5 "numpy<2.2"

then, from the repository root (CPU only, a few seconds):

    /opt/rmgen-py/bin/python tests/parity/generate_train.py

Inputs: golden/models/llama-rm and golden/models/llama-lm (written by generate.py), loaded
in fp32 with eager attention, in train mode (dropout is 0 in their configs).

The batch: B = 4 preference pairs built from torch.Generator().manual_seed(1234); for pair i,
in order, prompt, chosen and rejected ids are each drawn with torch.randint(3, 256, (n,))
(lengths PROMPT/CHOSEN/REJECTED below); the last id of each response is set to EOS (2). A
sequence is prompt + response, right padded with 0 to T = longest sequence (14). The trainers
get the same ids as the text of a word-level tokenizer (word "<id>" is token id), so TRL's own
tokenization and collators run; the script asserts they give back exactly these ids.

What it writes under tests/parity/golden/train/ (all fp32 unless said; scalars are 0-d):
  reward_step.safetensors  batch (int64): chosen_input_ids, chosen_attention_mask,
                           rejected_input_ids, rejected_attention_mask (B,T),
                           chosen_prompt_len, rejected_prompt_len (B,), chosen_labels,
                           rejected_labels (B,T; TRL convention: prompt and padding -100);
                           Bradley-Terry step of llama-rm (RewardTrainer.compute_loss, no margin):
                           rewards_chosen, rewards_rejected (B,), loss, accuracy, grad_norm
                           (clip_grad_norm_'s total norm, before clipping), lr (of this step),
                           grad.<name> (before clipping), param.<name> (after the step)
  dpo_step.safetensors     the same batch; two DPO cases (sigmoid, beta 0.03, reference llama-lm):
                           equal.*      policy = llama-lm (loss is log 2)
                           perturbed.*  policy = llama-lm + 0.01 * randn (Generator seed 99,
                                        named_parameters() order); init.<name> is that policy
                           each with policy_chosen_logps, policy_rejected_logps,
                           ref_chosen_logps, ref_rejected_logps, losses, rewards_chosen,
                           rewards_rejected (B,) and loss plus TRL's logged metrics under their
                           names (rewards/chosen, rewards/rejected, rewards/accuracies,
                           rewards/margins, logps/chosen, logps/rejected, logits/chosen,
                           logits/rejected), grad_norm and lr; the perturbed case's step gives
                           grad.<name> (before clipping) and param.<name> (after the step)
  summary.json             scalars, EXRM/DPORM accuracy checks, versions, hyperparameters,
                           expected tolerances
  dpo_smoothed_step.safetensors
                           the same batch; the perturbed policy's step with label smoothing
                           (conservative DPO: sigmoid, beta 0.03, label_smoothing 0.1), keys
                           as dpo_step's: smoothed.<the perturbed case's values and metrics>,
                           grad.<name>, param.<name> (its init is dpo_step's init.<name>; the
                           script checks the smoothing changes loss and gradients); the
                           safetensors metadata holds versions and hyperparameters
  exrm_pad_eos.safetensors EXRM pooling when the pad id is EOS (Zephyr: pad = </s>): llama-rm
                           with pad_token_id = eos = 2, B = 3 pairs whose prompts hold EOS
                           mid-sequence (Zephyr's "</s>" after each turn; pair 2's chosen
                           response too), rows right padded with 2. batch (as above, padded
                           with 2), scores_chosen, scores_rejected (B,): score head on the
                           final-norm hidden state at the last position the attention mask
                           keeps (REFERENCE section 2; checked against each sequence run
                           alone), loss (Bradley-Terry of those scores), and
                           hf_scores_chosen, hf_scores_rejected: transformers 4.46's own
                           LlamaForSequenceClassification logits, which pool before the first
                           pad id in the row (here a mid-sequence EOS); the script asserts
                           every side's two scores differ by more than 1e-3

The goldens are fp32 CPU results: on another CPU, kernel order can change their last bits
(within the tolerances below), so rerunning rewrites the files with such differences.

One optimizer step, as transformers' Trainer does it: Trainer.create_optimizer_and_scheduler
(torch.optim.AdamW, betas 0.9/0.999, eps 1e-8, weight decay 0; linear schedule, no warmup,
10 total steps), gradient of the batch loss, clip_grad_norm_(max_norm=1.0), optimizer.step(),
lr_scheduler.step(). Rerunning it on one machine rewrites everything identically (fixed
seeds, one thread).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,  # noqa: E402
                          PreTrainedTokenizerFast)
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden")
MODELS = os.path.join(GOLDEN, "models")

VOCAB = 256
PAD, BOS, EOS = 0, 1, 2
B = 4
PROMPT = [5, 7, 4, 6]
CHOSEN = [6, 3, 8, 5]
REJECTED = [4, 7, 2, 6]
BATCH_SEED = 1234
PERTURB_SEED, PERTURB_STD = 99, 0.01

HPARAMS = {"learning_rate": 1e-3, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
           "adam_epsilon": 1e-8, "lr_scheduler_type": "linear", "warmup_steps": 0,
           "max_steps": 10, "max_grad_norm": 1.0, "per_device_train_batch_size": B,
           "gradient_accumulation_steps": 1}
DPO_HPARAMS = {"beta": 0.03, "loss_type": "sigmoid", "label_smoothing": 0.0,
               "reference_free": False}
LABEL_SMOOTHING = 0.1  # the smoothed case (conservative DPO)

# The pad-equals-EOS batch: per pair, the prompt's turns (lengths of random-id runs, each
# closed by EOS as Zephyr's "</s>" closes a turn, the last one left open as the generation
# prompt), then each response (runs joined by EOS; the response's own EOS appended).
PAD_EOS_SEED = 4321
PAD_EOS_PAIRS = [([4, 3], [3], [5]),
                 ([3, 2, 3], [6], [2]),
                 ([5, 2], [2, 3], [4])]

TOLERANCES = {
    "note": "fp32 CPU goldens; another kernel order changes the last bits only (an independent "
            "plain-PyTorch recompute of the perturbed DPO step: grads within 4e-9, params after "
            "the step within 8e-9 where |grad| >= 1e-5 and 1.8e-6 elsewhere)",
    "rewards_logps_loss_metrics": {"rtol": 1e-5, "atol": 1e-5},
    "grad_norm": {"rtol": 1e-4},
    "grads": {"rtol": 1e-3, "atol": 1e-6},
    "params_after_step": {
        "atol": 1e-6, "where": "|grad| >= 1e-5",
        "elsewhere_atol": 1e-3,
        "note": "AdamW's first step moves a weight by lr * g / (|g| + eps) ~ lr * sign(g), so a "
                "last-bit change of a tiny gradient can move it by up to lr; zero gradients "
                "(embedding rows of unused tokens) leave the weight unchanged"},
    "accuracies": "exact",
}


def word_tokenizer():
    """A word-level tokenizer whose word "<id>" is token id, so TRL tokenizes our ids."""
    tok = Tokenizer(models.WordLevel(vocab={word(i): i for i in range(VOCAB)},
                                     unk_token=word(PAD)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=word(PAD),
                                   bos_token=word(BOS), eos_token=word(EOS),
                                   unk_token=word(PAD), model_input_names=["input_ids",
                                                                          "attention_mask"])


def word(i):
    return f"<{int(i)}>"  # no word is a substring of another (special tokens match anywhere)


def text(ids):
    return " ".join(word(i) for i in ids)


def make_pairs():
    gen = torch.Generator().manual_seed(BATCH_SEED)
    pairs = []
    for p, c, r in zip(PROMPT, CHOSEN, REJECTED):
        prompt = torch.randint(3, VOCAB, (p,), generator=gen)
        chosen = torch.randint(3, VOCAB, (c,), generator=gen)
        rejected = torch.randint(3, VOCAB, (r,), generator=gen)
        chosen[-1] = EOS
        rejected[-1] = EOS
        pairs.append((prompt, chosen, rejected))
    return pairs


def make_batch(pairs):
    T = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    out = {}
    for side, k in (("chosen", 1), ("rejected", 2)):
        ids = torch.full((B, T), PAD, dtype=torch.int64)
        mask = torch.zeros(B, T, dtype=torch.int64)
        labels = torch.full((B, T), -100, dtype=torch.int64)
        plen = torch.zeros(B, dtype=torch.int64)
        for b, pair in enumerate(pairs):
            seq = torch.cat([pair[0], pair[k]])
            ids[b, :len(seq)] = seq
            mask[b, :len(seq)] = 1
            labels[b, len(pair[0]):len(seq)] = pair[k]
            plen[b] = len(pair[0])
        out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                    f"{side}_prompt_len": plen, f"{side}_labels": labels})
    return out


def training_args(cls, tmp, **extra):
    return cls(output_dir=tmp, report_to="none", use_cpu=True, seed=0, logging_strategy="no",
               save_strategy="no", disable_tqdm=True, remove_unused_columns=False,
               lr_scheduler_type=HPARAMS["lr_scheduler_type"],
               **{k: v for k, v in HPARAMS.items() if k != "lr_scheduler_type"}, **extra)


def optimizer_step(trainer, loss):
    """One step as transformers' Trainer takes it (gradient accumulation 1, one process)."""
    model = trainer.model
    trainer.create_optimizer_and_scheduler(num_training_steps=HPARAMS["max_steps"])
    opt, sched = trainer.optimizer, trainer.lr_scheduler
    assert type(opt) is torch.optim.AdamW, type(opt)
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
        assert group["weight_decay"] == 0.0
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), HPARAMS["max_grad_norm"])
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    model.zero_grad(set_to_none=True)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return grads, grad_norm.detach().float(), lr, params


def scalar(x):
    return torch.as_tensor(x, dtype=torch.float32).reshape(()).clone()


def reward_step(batch, tok, tmp):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(MODELS, "llama-rm"), torch_dtype=torch.float32,
        attn_implementation="eager")
    assert model.config.pad_token_id == PAD and model.config.num_labels == 1
    rows = {k: [] for k in ("input_ids_chosen", "attention_mask_chosen",
                            "input_ids_rejected", "attention_mask_rejected")}
    for b in range(B):
        for side in ("chosen", "rejected"):
            m = batch[f"{side}_attention_mask"][b].bool()
            rows[f"input_ids_{side}"].append(batch[f"{side}_input_ids"][b][m].tolist())
            rows[f"attention_mask_{side}"].append([1] * int(m.sum()))
    dataset = Dataset.from_dict(rows)
    trainer = RewardTrainer(model=model, args=training_args(RewardConfig, tmp),
                            train_dataset=dataset, processing_class=tok)
    model.train()
    # TRL's collator pads chosen and rejected separately; the goldens use one common width T
    # (trailing padding does not change a causal model's outputs), checked here.
    collated = trainer.data_collator([dataset[b] for b in range(B)])
    for side in ("chosen", "rejected"):
        w = collated[f"input_ids_{side}"].shape[1]
        assert torch.equal(collated[f"input_ids_{side}"], batch[f"{side}_input_ids"][:, :w])
        assert torch.equal(collated[f"attention_mask_{side}"],
                           batch[f"{side}_attention_mask"][:, :w])
        assert not batch[f"{side}_attention_mask"][:, w:].any()
    inputs = trainer._prepare_inputs({
        "input_ids_chosen": batch["chosen_input_ids"],
        "attention_mask_chosen": batch["chosen_attention_mask"],
        "input_ids_rejected": batch["rejected_input_ids"],
        "attention_mask_rejected": batch["rejected_attention_mask"], "return_loss": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss, out = trainer.compute_loss(model, inputs, return_outputs=True)
    r_c = out["rewards_chosen"].detach().squeeze(-1)
    r_l = out["rewards_rejected"].detach().squeeze(-1)
    grads, grad_norm, lr, params = optimizer_step(trainer, loss)
    g = {k: v.contiguous() for k, v in batch.items()}
    g.update({"loss": scalar(loss.detach()), "rewards_chosen": r_c.contiguous(),
              "rewards_rejected": r_l.contiguous(),
              "accuracy": scalar((r_c > r_l).float().mean()),
              "grad_norm": scalar(grad_norm), "lr": scalar(lr)})
    g.update({f"grad.{n}": t.contiguous() for n, t in grads.items()})
    g.update({f"param.{n}": t.contiguous() for n, t in params.items()})
    return g


def load_lm():
    return AutoModelForCausalLM.from_pretrained(os.path.join(MODELS, "llama-lm"),
                                                torch_dtype=torch.float32,
                                                attn_implementation="eager")


def perturb(model):
    gen = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(PERTURB_STD * torch.randn(p.shape, generator=gen))


def dpo_case(pairs, batch, tok, tmp, perturbed, label_smoothing=0.0, prefix=None):
    torch.manual_seed(0)
    policy, ref = load_lm(), load_lm()
    if perturbed:
        perturb(policy)
    init = {n: p.detach().clone() for n, p in policy.named_parameters()}
    dataset = Dataset.from_dict({"prompt": [text(p) for p, _, _ in pairs],
                                 "chosen": [text(c[:-1]) for _, c, _ in pairs],
                                 "rejected": [text(r[:-1]) for _, _, r in pairs]})
    args = training_args(DPOConfig, tmp, **dict(DPO_HPARAMS, label_smoothing=label_smoothing))
    assert args.label_smoothing == label_smoothing and args.loss_type == "sigmoid"
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset,
                         processing_class=tok)
    for p in ref.parameters():
        p.requires_grad_(False)
    policy.train()
    ref.train()
    # TRL appended the EOS to each completion; its tokens must be exactly ours.
    for b, (p, c, r) in enumerate(pairs):
        row = trainer.train_dataset[b]
        assert row["prompt_input_ids"] == p.tolist(), b
        assert row["chosen_input_ids"] == c.tolist(), b
        assert row["rejected_input_ids"] == r.tolist(), b
    inputs = trainer._prepare_inputs(
        trainer.data_collator([trainer.train_dataset[b] for b in range(B)]))

    # The step's loss and metrics, exactly as DPOTrainer.compute_loss produces them.
    loss, metrics = trainer.compute_loss(policy, inputs, return_outputs=True)
    # Per-example values, from TRL's own pieces (same inputs, no grad).
    with torch.no_grad():
        pol = trainer.concatenated_forward(policy, inputs)
        ref_c, ref_l = trainer.compute_ref_log_probs(inputs)
        losses, rew_c, rew_l = trainer.dpo_loss(pol["chosen_logps"], pol["rejected_logps"],
                                                ref_c, ref_l)
    assert torch.allclose(losses.mean(), loss.detach(), rtol=0, atol=1e-7)
    # Cross-check TRL's masking against the saved -100 labels (the C++ convention).
    with torch.no_grad():
        for side, lp in (("chosen", pol["chosen_logps"]), ("rejected", pol["rejected_logps"])):
            logits = policy(input_ids=batch[f"{side}_input_ids"],
                            attention_mask=batch[f"{side}_attention_mask"]).logits
            labels = batch[f"{side}_labels"][:, 1:]
            keep = labels != -100
            tok_lp = torch.gather(logits[:, :-1].log_softmax(-1), 2,
                                  labels.clamp(min=0).unsqueeze(2)).squeeze(2)
            mine = (tok_lp * keep).sum(-1)
            assert torch.allclose(mine, lp, rtol=1e-5, atol=1e-4), (side, mine, lp)

    assert trainer.label_smoothing == label_smoothing
    if prefix is None:
        prefix = "perturbed." if perturbed else "equal."
    g = {f"{prefix}policy_chosen_logps": pol["chosen_logps"],
         f"{prefix}policy_rejected_logps": pol["rejected_logps"],
         f"{prefix}ref_chosen_logps": ref_c, f"{prefix}ref_rejected_logps": ref_l,
         f"{prefix}losses": losses, f"{prefix}rewards_chosen": rew_c,
         f"{prefix}rewards_rejected": rew_l, f"{prefix}loss": scalar(loss.detach())}
    g.update({f"{prefix}{k}": scalar(v) for k, v in metrics.items()})
    grads, grad_norm, lr, params = optimizer_step(trainer, loss)
    g.update({f"{prefix}grad_norm": scalar(grad_norm), f"{prefix}lr": scalar(lr)})
    if perturbed:
        g.update({f"init.{n}": t for n, t in init.items()})
        g.update({f"grad.{n}": t for n, t in grads.items()})
        g.update({f"param.{n}": t for n, t in params.items()})
    return {k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in g.items()}


def pad_eos_pairs():
    gen = torch.Generator().manual_seed(PAD_EOS_SEED)

    def runs(lengths, close_last):
        ids = []
        for i, n in enumerate(lengths):
            ids += torch.randint(3, VOCAB, (n,), generator=gen).tolist()
            if close_last or i + 1 < len(lengths):
                ids.append(EOS)
        return ids

    return [([BOS] + runs(p, False), runs(c, True), runs(r, True)) for p, c, r in PAD_EOS_PAIRS]


def exrm_pad_eos():
    """Reward scores of llama-rm with pad = EOS, pooled from the attention mask."""
    model = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(MODELS, "llama-rm"), torch_dtype=torch.float32,
        attn_implementation="eager", pad_token_id=EOS).eval()
    assert model.config.pad_token_id == EOS == model.config.eos_token_id
    pairs = pad_eos_pairs()
    T = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
    g = {}
    with torch.no_grad():
        for side, k in (("chosen", 1), ("rejected", 2)):
            ids = torch.full((len(pairs), T), EOS, dtype=torch.int64)  # right padding = EOS
            mask = torch.zeros(len(pairs), T, dtype=torch.int64)
            plen = torch.zeros(len(pairs), dtype=torch.int64)
            for b, pair in enumerate(pairs):
                seq = pair[0] + pair[k]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
                plen[b] = len(pair[0])
            # The score at the last position the mask keeps: final-norm hidden state (LlamaModel
            # applies the norm) times the score weight.
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(-1) - 1
            assert torch.equal(ids[torch.arange(len(pairs)), last], torch.full_like(last, EOS))
            scores = model.score(hidden[torch.arange(len(pairs)), last]).squeeze(-1)
            # ... which is the score of each sequence run alone, without padding.
            for b, pair in enumerate(pairs):
                seq = torch.tensor([pair[0] + pair[k]])
                alone = model.score(model.model(input_ids=seq).last_hidden_state[0, -1])
                assert torch.allclose(alone, scores[b], rtol=0, atol=1e-6), (side, b)
            # transformers' own pooling searches the first pad id (4.46: argmax(eq(ids, pad)) - 1).
            hf = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
            first_pad = torch.eq(ids, EOS).int().argmax(-1) - 1
            searched = model.score(hidden[torch.arange(len(pairs)), first_pad]).squeeze(-1)
            assert torch.allclose(hf, searched, rtol=0, atol=1e-6), (hf, searched)
            assert ((hf - scores).abs() > 1e-3).all(), (side, hf, scores)
            g.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask,
                      f"{side}_prompt_len": plen, f"scores_{side}": scores,
                      f"hf_scores_{side}": hf})
    g["loss"] = scalar(-torch.nn.functional.logsigmoid(g["scores_chosen"] -
                                                        g["scores_rejected"]).mean())
    return {k: v.contiguous() for k, v in g.items()}


def accuracy(correct, ties, n):
    return {"n": n, "correct": correct, "ties": ties, "acc": correct / n,
            "acc_tie_half": (correct + 0.5 * ties) / n}


def exrm_accuracy(r_c, r_l):
    return accuracy(int((r_c > r_l).sum()), int((r_c == r_l).sum()), len(r_c))


def dporm_accuracy(g, prefix, beta):
    implicit_c = beta * (g[f"{prefix}policy_chosen_logps"] - g[f"{prefix}ref_chosen_logps"])
    implicit_l = beta * (g[f"{prefix}policy_rejected_logps"] - g[f"{prefix}ref_rejected_logps"])
    return accuracy(int((implicit_c > implicit_l).sum()), int((implicit_c == implicit_l).sum()),
                    len(implicit_c))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(GOLDEN, "train"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.makedirs(args.out, exist_ok=True)

    tok = word_tokenizer()
    pairs = make_pairs()
    batch = make_batch(pairs)
    with tempfile.TemporaryDirectory() as tmp:
        rm = reward_step(batch, tok, tmp)
        dpo = {k: v.contiguous() for k, v in batch.items()}
        dpo.update(dpo_case(pairs, batch, tok, tmp, perturbed=False))
        dpo.update(dpo_case(pairs, batch, tok, tmp, perturbed=True))
        smoothed = {k: v.contiguous() for k, v in batch.items()}
        smoothed.update(dpo_case(pairs, batch, tok, tmp, perturbed=True,
                                 label_smoothing=LABEL_SMOOTHING, prefix="smoothed."))
    assert abs(dpo["equal.loss"].item() - math.log(2)) < 1e-6, dpo["equal.loss"]
    # The smoothed case starts where the perturbed one does, and the smoothing shows in its
    # loss (by eps * beta * mean z) and gradients (by about eps / (1/2) of the unsmoothed ones).
    for k in list(smoothed):
        if k.startswith("init."):
            assert torch.equal(smoothed.pop(k), dpo[k]), k
    for k in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
              "ref_rejected_logps", "rewards/margins"):
        assert torch.equal(smoothed[f"smoothed.{k}"], dpo[f"perturbed.{k}"]), k
    assert abs(smoothed["smoothed.loss"] - dpo["perturbed.loss"]) > 1e-4
    assert max((smoothed[k] - dpo[k]).abs().max().item() / dpo[k].abs().max().item()
               for k in dpo if k.startswith("grad.")) > 0.05
    pad_eos = exrm_pad_eos()
    save_file(rm, os.path.join(args.out, "reward_step.safetensors"))
    save_file(dpo, os.path.join(args.out, "dpo_step.safetensors"))
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "trl": trl.__version__, "datasets": datasets.__version__}
    save_file(smoothed, os.path.join(args.out, "dpo_smoothed_step.safetensors"), metadata={
        "versions": json.dumps(versions),
        "hyperparameters": json.dumps({"optimizer": HPARAMS, "dpo": dict(
            DPO_HPARAMS, label_smoothing=LABEL_SMOOTHING)}),
        "init": "dpo_step.safetensors init.<name> (the perturbed policy)",
        "tolerances": json.dumps(TOLERANCES)})
    save_file(pad_eos, os.path.join(args.out, "exrm_pad_eos.safetensors"), metadata={
        "versions": json.dumps(versions),
        "model": "golden/models/llama-rm with pad_token_id = eos_token_id = 2",
        "pairs": json.dumps({"seed": PAD_EOS_SEED, "runs": PAD_EOS_PAIRS}),
        "tolerances": json.dumps({"scores_loss": {"atol": 1e-5},
                                  "hf_scores": "differ from scores by more than 1e-3"})})

    beta = DPO_HPARAMS["beta"]
    scalars = {"reward": {k: rm[k].item() for k in ("loss", "accuracy", "grad_norm", "lr")}}
    scalars["reward"]["rewards_chosen"] = rm["rewards_chosen"].tolist()
    scalars["reward"]["rewards_rejected"] = rm["rewards_rejected"].tolist()
    for case in ("equal", "perturbed"):
        scalars[f"dpo_{case}"] = {k[len(case) + 1:]: (v.item() if v.dim() == 0 else v.tolist())
                                  for k, v in dpo.items() if k.startswith(case + ".")}
    summary = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "datasets": datasets.__version__},
        "trl_semantics": "trl 0.13.0 RewardTrainer.compute_loss; DPOTrainer.compute_loss "
                         "(concatenated_forward, dpo_loss sigmoid, get_batch_loss_metrics)",
        "batch": {"B": B, "T": int(batch["chosen_input_ids"].shape[1]), "pad_id": PAD,
                  "eos_id": EOS, "seed": BATCH_SEED, "prompt_len": PROMPT,
                  "chosen_len": CHOSEN, "rejected_len": REJECTED},
        "models": {"reward": "golden/models/llama-rm", "policy_and_reference":
                   "golden/models/llama-lm", "dtype": "float32", "attention": "eager",
                   "perturbation": {"seed": PERTURB_SEED, "std": PERTURB_STD,
                                    "order": "named_parameters()"}},
        "hyperparameters": {"optimizer": HPARAMS, "lr_of_the_step": HPARAMS["learning_rate"],
                            "dpo": DPO_HPARAMS,
                            "reward": {"margin": None, "center_rewards_coefficient": None}},
        "scalars": scalars,
        "accuracy_checks": {
            "exrm": exrm_accuracy(rm["rewards_chosen"], rm["rewards_rejected"]),
            "dporm_equal": dporm_accuracy(dpo, "equal.", beta),
            "dporm_perturbed": dporm_accuracy(dpo, "perturbed.", beta),
            "rule": "EXRM r_c > r_l; DPORM beta*(logp_c - ref_c) > beta*(logp_l - ref_l); "
                    "both strict, ties separate, acc_tie_half = (correct + 0.5 ties) / n"},
        "tolerances": TOLERANCES,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    for name, g in (("reward_step", rm), ("dpo_step", dpo), ("dpo_smoothed_step", smoothed),
                    ("exrm_pad_eos", pad_eos)):
        print(f"{name}: {len(g)} tensors")
    print("smoothed:", {k: v.item() for k, v in smoothed.items()
                        if k.startswith("smoothed.") and v.dim() == 0})
    print("pad = eos:", {k: v.tolist() for k, v in pad_eos.items() if "scores" in k})
    print(json.dumps(scalars, indent=1))


if __name__ == "__main__":
    sys.exit(main())
