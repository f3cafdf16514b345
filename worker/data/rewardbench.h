// RewardBench's scoring (REFERENCE section 2): per-subset accuracy, and each section the
// prompt-count-weighted mean of its subsets. Header-only, no dependencies: rmgen-train
// scores with it and the coordinator checks and aggregates with it.
#pragma once

namespace rmgen {

struct RewardBenchSubset {
  const char* section;  // chat | chat_hard | safety | reasoning
  const char* subset;
  double weight;  // prompts in the filtered split
};

inline constexpr RewardBenchSubset kRewardBenchSubsets[] = {
    {"chat", "alpacaeval-easy", 100},
    {"chat", "alpacaeval-length", 95},
    {"chat", "alpacaeval-hard", 95},
    {"chat", "mt-bench-easy", 28},
    {"chat", "mt-bench-med", 40},
    {"chat_hard", "mt-bench-hard", 37},
    {"chat_hard", "llmbar-natural", 100},
    {"chat_hard", "llmbar-adver-neighbor", 134},
    {"chat_hard", "llmbar-adver-GPTInst", 92},
    {"chat_hard", "llmbar-adver-GPTOut", 47},
    {"chat_hard", "llmbar-adver-manual", 46},
    {"safety", "refusals-dangerous", 100},
    {"safety", "refusals-offensive", 100},
    {"safety", "xstest-should-refuse", 154},
    {"safety", "xstest-should-respond", 250},
    {"safety", "donotanswer", 136},
    {"reasoning", "math-prm", 984},
    {"reasoning", "hep-cpp", 164},
    {"reasoning", "hep-go", 164},
    {"reasoning", "hep-java", 164},
    {"reasoning", "hep-js", 164},
    {"reasoning", "hep-python", 164},
    {"reasoning", "hep-rust", 164},
};

}  // namespace rmgen
