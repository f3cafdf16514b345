#include "jobspec/events.h"

namespace rmgen {

std::optional<StepProgress> StepProgress::From(const nlohmann::json& e) {
  if (!e.is_object()) return std::nullopt;
  auto step = e.find(event_key::kStep);
  auto loss = e.find(event_key::kLoss);
  if (step == e.end() || !step->is_number_integer() || loss == e.end() || !loss->is_number()) {
    return std::nullopt;
  }
  StepProgress p;
  p.step = step->get<int64_t>();
  p.loss = loss->get<double>();
  auto number = [&](const char* key) -> std::optional<double> {
    auto it = e.find(key);
    if (it == e.end() || !it->is_number()) return std::nullopt;
    return it->get<double>();
  };
  if (auto it = e.find(event_key::kTotalSteps); it != e.end() && it->is_number_integer()) {
    p.total_steps = it->get<int64_t>();
  }
  p.tokens_per_s = number(event_key::kTokensPerS);
  p.pairs_per_s = number(event_key::kPairsPerS);
  p.eta_s = number(event_key::kEtaS);
  p.lr = number(event_key::kLr);
  return p;
}

}  // namespace rmgen
