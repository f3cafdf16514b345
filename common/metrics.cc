#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

namespace rmgen {
namespace {

std::string Num(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  for (int precision = 6; precision <= 17; ++precision) {  // the shortest that reads back
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string LabelText(const MetricLabels& labels, const std::string& extra_key = "",
                      const std::string& extra_value = "") {
  if (labels.empty() && extra_key.empty()) return "";
  std::string s = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) s += ",";
    first = false;
    s += k + "=\"" + Metrics::Escape(v) + "\"";
  }
  if (!extra_key.empty()) {
    if (!first) s += ",";
    s += extra_key + "=\"" + extra_value + "\"";
  }
  return s + "}";
}

}  // namespace

const std::vector<double>& Metrics::DefaultBuckets() {
  static const std::vector<double> b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
  return b;
}

std::string Metrics::Escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Metrics::Family& Metrics::Get(const std::string& name) {
  auto it = families_.find(name);
  if (it != families_.end()) return it->second;
  order_.push_back(name);
  return families_[name];
}

void Metrics::Declare(const std::string& name, Type type, const std::string& help,
                      std::vector<double> buckets) {
  std::lock_guard<std::mutex> l(mu_);
  Family& f = Get(name);
  f.type = type;
  f.help = help;
  if (type == Type::kHistogram) {
    f.bounds = buckets.empty() ? DefaultBuckets() : std::move(buckets);
    std::sort(f.bounds.begin(), f.bounds.end());
  }
}

void Metrics::Inc(const std::string& name, const MetricLabels& labels, double v) {
  std::lock_guard<std::mutex> l(mu_);
  Get(name).series[labels].value += v;
}

void Metrics::Set(const std::string& name, const MetricLabels& labels, double v) {
  std::lock_guard<std::mutex> l(mu_);
  Get(name).series[labels].value = v;
}

void Metrics::Observe(const std::string& name, const MetricLabels& labels, double v) {
  std::lock_guard<std::mutex> l(mu_);
  Family& f = Get(name);
  if (f.type != Type::kHistogram) {  // observed before (or without) being declared
    f.type = Type::kHistogram;
    f.bounds = DefaultBuckets();
  }
  Series& s = f.series[labels];
  if (s.buckets.size() != f.bounds.size()) s.buckets.assign(f.bounds.size(), 0);
  const auto at = std::lower_bound(f.bounds.begin(), f.bounds.end(), v) - f.bounds.begin();
  if (at < static_cast<long>(f.bounds.size())) ++s.buckets[at];
  s.value += v;
  ++s.count;
}

void Metrics::Clear(const std::string& name) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = families_.find(name);
  if (it != families_.end()) it->second.series.clear();
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> l(mu_);
  std::ostringstream o;
  for (const auto& name : order_) {
    const Family& f = families_.at(name);
    if (!f.help.empty()) o << "# HELP " << name << " " << f.help << "\n";
    o << "# TYPE " << name << " "
      << (f.type == Type::kCounter     ? "counter"
          : f.type == Type::kHistogram ? "histogram"
                                       : "gauge")
      << "\n";
    for (const auto& [labels, s] : f.series) {
      if (f.type != Type::kHistogram) {
        o << name << LabelText(labels) << " " << Num(s.value) << "\n";
        continue;
      }
      uint64_t cum = 0;
      for (size_t i = 0; i < f.bounds.size(); ++i) {
        cum += i < s.buckets.size() ? s.buckets[i] : 0;
        o << name << "_bucket" << LabelText(labels, "le", Num(f.bounds[i])) << " " << cum << "\n";
      }
      o << name << "_bucket" << LabelText(labels, "le", "+Inf") << " " << s.count << "\n";
      o << name << "_sum" << LabelText(labels) << " " << Num(s.value) << "\n";
      o << name << "_count" << LabelText(labels) << " " << s.count << "\n";
    }
  }
  return o.str();
}

}  // namespace rmgen
