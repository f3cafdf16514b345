// Tables for people: fixed-width text (first row a header, underlined) and Markdown.
#pragma once

#include <string>
#include <vector>

namespace rmgen::coord {

using TextRows = std::vector<std::vector<std::string>>;

std::string TextGrid(const TextRows& rows);
std::string MarkdownGrid(const TextRows& rows);

}  // namespace rmgen::coord
