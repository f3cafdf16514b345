// common/metrics.h: the Prometheus text exposition format.
#include "common/metrics.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>
#include <vector>

namespace rmgen {
namespace {

TEST(Metrics, CountersAndGaugesRenderWithHelpTypeAndSortedLabels) {
  Metrics m;
  m.Declare("x_total", Metrics::Type::kCounter, "Things.");
  m.Declare("y", Metrics::Type::kGauge, "Level.");
  m.Inc("x_total", {{"kind", "b"}});
  m.Inc("x_total", {{"kind", "a"}}, 2.5);
  m.Inc("x_total", {{"kind", "b"}});
  m.Set("y", {}, 7);
  m.Set("y", {}, 3);
  EXPECT_EQ(m.Render(),
            "# HELP x_total Things.\n"
            "# TYPE x_total counter\n"
            "x_total{kind=\"a\"} 2.5\n"
            "x_total{kind=\"b\"} 2\n"
            "# HELP y Level.\n"
            "# TYPE y gauge\n"
            "y 3\n");
  m.Clear("y");
  EXPECT_EQ(m.Render().find("\ny "), std::string::npos);
}

TEST(Metrics, HistogramBucketsAreCumulativeAndEndInTheCount) {
  Metrics m;
  m.Declare("lat_seconds", Metrics::Type::kHistogram, "Latency.", {0.1, 1, 0.01});
  for (double v : {0.005, 0.01, 0.5, 0.5, 2.0}) m.Observe("lat_seconds", {{"m", "A"}}, v);
  const std::string text = m.Render();
  // Bounds sorted; a value equal to a bound falls in it (le is <=).
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"A\",le=\"0.01\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"A\",le=\"0.1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"A\",le=\"1\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{m=\"A\",le=\"+Inf\"} 5\n"), std::string::npos) << text;
  const std::string sum = "lat_seconds_sum{m=\"A\"} ";
  ASSERT_NE(text.find(sum), std::string::npos) << text;
  EXPECT_NEAR(std::strtod(text.c_str() + text.find(sum) + sum.size(), nullptr), 3.015, 1e-12);
  EXPECT_NE(text.find("lat_seconds_count{m=\"A\"} 5\n"), std::string::npos) << text;
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(Metrics::Escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  Metrics m;
  m.Set("g", {{"job", "x\"}\n# TYPE evil counter"}}, 1);
  const std::string text = m.Render();
  EXPECT_NE(text.find("g{job=\"x\\\"}\\n# TYPE evil counter\"} 1\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("\n# TYPE evil"), std::string::npos);
}

TEST(Metrics, ConcurrentUpdatesAreAllCounted) {
  Metrics m;
  m.Declare("n_total", Metrics::Type::kCounter, "N.");
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        m.Inc("n_total");
        m.Observe("h", {}, 0.001);
      }
    });
  }
  for (auto& t : ts) t.join();
  const std::string text = m.Render();
  EXPECT_NE(text.find("n_total 40000\n"), std::string::npos);
  EXPECT_NE(text.find("h_count 40000\n"), std::string::npos);
}

}  // namespace
}  // namespace rmgen
