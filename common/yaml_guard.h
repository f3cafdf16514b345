// A guard for YAML from untrusted hands (study files, job specs, dataset catalogs), run on
// the text BEFORE YAML::Load. It streams the first document through yaml-cpp's event parser
// (what YAML::Load reads) and refuses, naming the file and line:
//   - aliases (*name): yaml-cpp shares an aliased node, but every traversal expands it, so
//     nine nested levels of nine aliases ("billion laughs", a few hundred bytes) cost 9^9
//     visits. Anchors alone (&name) are accepted: without aliases they change nothing.
//   - more than max_nodes nodes (scalars, nulls, mappings, sequences; keys count),
//   - nesting deeper than max_depth mappings/sequences,
//   - a scalar longer than max_scalar_bytes,
//   - a text longer than max_bytes (checked before parsing).
// The parse stops at the first refusal: nothing is built, so the cost is bounded by the text.
// Text that is not valid YAML passes the guard (as far as it got within the limits): the
// caller's YAML::Load reports the syntax error in its own words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace rmgen {

struct YamlLimits {
  // 1 MiB: config files are a few KiB, and yaml-cpp's scanner is slower than linear on some
  // shapes (1 MiB of '[' takes ~0.4 s to refuse; 2 MiB ~1.4 s).
  size_t max_bytes = 1u << 20;
  int64_t max_nodes = 200000;            // every scalar, null, mapping and sequence
  int max_depth = 64;                    // nested mappings/sequences
  size_t max_scalar_bytes = 256u << 10;  // one value (a key or a value), 256 KiB
};

// OK when `text` is within `limits` and holds no alias. `source` names the file and `what`
// the kind of document, plural, in messages: "<source>:<line>: YAML aliases (*a) are not
// accepted in <what>" (e.g. what = "study files").
Status CheckYaml(const std::string& text, const std::string& source, const std::string& what,
                 const YamlLimits& limits = {});

}  // namespace rmgen
