// The generate and annotate jobs of rmgen-train (iterative DPO's sampling and labelling).
//
//   generate  a policy and a prompt source -> K responses a prompt, OUT/generations.jsonl:
//             one row a prompt, in prompt order:
//             and OUT/alpaca_eval.json: AlpacaEval's input, [{"instruction", "output",
//             "generator", "dataset"}] with each prompt's first response, to judge elsewhere.
//             generations.jsonl rows:
//               {"prompt_index", "id", "prompt": [messages], "responses": [{"text",
//                "finish_reason": "stop" | "length", "tokens"}], "prompt_tokens",
//                "generator", "seed", "key": a digest of what generated it}
//   annotate  generations.jsonl and a reward model -> OUT/pairs.jsonl in the `pairs` format:
//             the best-scored response chosen, the worst rejected, with score_chosen,
//             score_rejected and every response's score ("scores"). A prompt whose best and
//             worst tie is dropped and counted. The reward is an EXRM's scalar head (exrm) or
//             DPO's implicit reward beta * (log pi - log pi_ref) of a policy and its
//             reference (dporm), each response scored after the prompt as training sees it
//             (the chat template, BOS, the response and EOS).
//
// Both are sharded over the ranks and resumable: the prompts finished (generate: by each
// rank; annotate: by rank 0, a chunk of 64 at a time) are appended to a file of the attempt
// under OUT/parts/, flushed as they go, and a later attempt of the same job (a digest of
// what produced them must match), on any number of ranks, skips every prompt found there. Rank 0
// merges the parts into the output at the end. Sampling is keyed by (generate.seed, prompt,
// sample), so outputs are the same whatever the rank count or the batch (worker/model/generate.h).
//
// Checked before any compute, each error naming the field or the record: an empty prompt
// set, a prompt that does not fit the model's context, a missing tokenizer, fewer than two
// responses to annotate.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "jobspec/spec.h"
#include "worker/comm/communicator.h"
#include "worker/data/chat_template.h"

namespace rmgen {

struct PromptRecord {
  std::string id;
  std::vector<Message> prompt;
};

// data.prompts: a catalog set's (or a pairs file's) distinct prompts in first-seen order,
// or a `prompts` JSONL file; then data.slice_index / slice_count and data.limit. Empty is an
// error naming data.prompts.
StatusOr<std::vector<PromptRecord>> LoadPrompts(const JobSpec& spec);

// A prompt's stable sampling key: a hash of its id and messages.
uint64_t PromptKey(const PromptRecord& p);

// `stop_after_batches` > 0: return CANCELLED after that many batches (every rank alike),
// with their rows kept for a resume (RunOptions::stop_after_steps; tests and preemption).
Status RunGenerate(const JobSpec& spec, const std::string& out_dir, Communicator* comm,
                   std::string* phase, int64_t stop_after_batches = 0);
// `stop_after_batches`: as RunGenerate's, in chunks of 64 prompts.
Status RunAnnotate(const JobSpec& spec, const std::string& out_dir, Communicator* comm,
                   std::string* phase, int64_t stop_after_batches = 0);
// judge: each prompt's first response of the policy (data.generations) against the
// baseline's (judge.baseline), matched by prompt id, scored by the synthetic suite's rule
// (oracle) or an EXRM (model.path) -> metrics.json {"judge": {reward, n, wins, ties, losses,
// win_rate (a tie counts 1/2), policy, baseline}}. Prompts only one side has are counted
// (unmatched) and left out.
Status RunJudge(const JobSpec& spec, const std::string& out_dir, Communicator* comm,
                std::string* phase);

}  // namespace rmgen
