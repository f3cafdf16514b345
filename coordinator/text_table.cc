#include "coordinator/text_table.h"

#include <algorithm>
#include <sstream>

namespace rmgen::coord {

std::string TextGrid(const TextRows& rows) {
  std::vector<size_t> w;
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      if (w.size() <= i) w.push_back(0);
      w[i] = std::max(w[i], r[i].size());
    }
  }
  std::ostringstream o;
  for (size_t k = 0; k < rows.size(); ++k) {
    std::string line;
    for (size_t i = 0; i < rows[k].size(); ++i) {
      line += (i ? "  " : "") + rows[k][i] + std::string(w[i] - rows[k][i].size(), ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    o << line << "\n";
    if (k == 0) {
      size_t total = 0;
      for (size_t x : w) total += x + 2;
      o << std::string(total >= 2 ? total - 2 : 0, '-') << "\n";
    }
  }
  return o.str();
}

std::string MarkdownGrid(const TextRows& rows) {
  std::ostringstream o;
  for (size_t k = 0; k < rows.size(); ++k) {
    o << "|";
    for (const auto& c : rows[k]) o << " " << c << " |";
    o << "\n";
    if (k == 0) {
      o << "|";
      for (size_t i = 0; i < rows[k].size(); ++i) o << "---|";
      o << "\n";
    }
  }
  return o.str();
}

}  // namespace rmgen::coord
