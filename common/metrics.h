// Prometheus metrics: a thread-safe registry of counters, gauges and histograms, rendered in
// the text exposition format (version 0.0.4). Families are declared once with their type and
// help; each series is a family plus label values. Label values are escaped; names are the
// caller's (constants in the code, never user input).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace rmgen {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Metrics {
 public:
  enum class Type { kCounter, kGauge, kHistogram };
  // Latency buckets in seconds: 0.5 ms .. 60 s.
  static const std::vector<double>& DefaultBuckets();

  // Declares a family; idempotent. An undeclared family is a gauge when Inc or Set first
  // uses it, a histogram with the default buckets when Observe does.
  void Declare(const std::string& name, Type type, const std::string& help,
               std::vector<double> buckets = {});
  void Inc(const std::string& name, const MetricLabels& labels = {}, double v = 1);
  void Set(const std::string& name, const MetricLabels& labels, double v);
  void Observe(const std::string& name, const MetricLabels& labels, double v);
  // Drops every series of a gauge family (before setting it afresh at a scrape).
  void Clear(const std::string& name);

  // Every family, in declaration order, series sorted by labels.
  std::string Render() const;

  // A label value as the exposition format writes it inside quotes.
  static std::string Escape(const std::string& v);

 private:
  struct Series {
    double value = 0;               // counter, gauge; histogram: sum
    uint64_t count = 0;             // histogram
    std::vector<uint64_t> buckets;  // histogram: per bucket (not cumulative)
  };
  struct Family {
    Type type = Type::kGauge;
    std::string help;
    std::vector<double> bounds;
    std::map<MetricLabels, Series> series;
  };
  Family& Get(const std::string& name);  // mu_ held
  mutable std::mutex mu_;
  std::vector<std::string> order_;
  std::map<std::string, Family> families_;
};

}  // namespace rmgen
