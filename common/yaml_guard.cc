#include "common/yaml_guard.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include <sstream>
#include <vector>

namespace rmgen {
namespace {

// Thrown from the handler to stop the parse at the first refusal.
struct Refused {
  Status status;
};

class Guard : public YAML::EventHandler {
 public:
  Guard(const std::string& source, const std::string& what, const YamlLimits& limits)
      : source_(source), what_(what), limits_(limits) {}

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { Node(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    // yaml-cpp numbers anchors 1, 2, ... in the order it reports them (OnAnchor).
    const std::string name =
        anchor >= 1 && anchor <= anchors_.size() ? anchors_[anchor - 1] : std::string("?");
    Refuse(mark,
           "YAML aliases (*" + name + ") are not accepted in " + what_ + "; write the value out");
  }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string& value) override {
    Node(mark);
    if (value.size() > limits_.max_scalar_bytes) {
      Refuse(mark, "a value of " + std::to_string(value.size()) + " bytes; " + what_ +
                       " hold values of at most " + std::to_string(limits_.max_scalar_bytes) +
                       " bytes");
    }
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Open(mark);
  }
  void OnSequenceEnd() override { --depth_; }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Open(mark);
  }
  void OnMapEnd() override { --depth_; }
  void OnAnchor(const YAML::Mark&, const std::string& name) override { anchors_.push_back(name); }

 private:
  [[noreturn]] void Refuse(const YAML::Mark& mark, const std::string& what) const {
    throw Refused{
        InvalidArgumentError(source_ + ":" + std::to_string(mark.line + 1) + ": " + what)};
  }
  void Node(const YAML::Mark& mark) {
    if (++nodes_ > limits_.max_nodes) {
      Refuse(mark, "more than " + std::to_string(limits_.max_nodes) + " YAML nodes; " + what_ +
                       " hold at most " + std::to_string(limits_.max_nodes));
    }
  }
  void Open(const YAML::Mark& mark) {
    Node(mark);
    if (++depth_ > limits_.max_depth) {
      Refuse(mark, "nested deeper than " + std::to_string(limits_.max_depth) + " levels; " + what_ +
                       " nest at most " + std::to_string(limits_.max_depth) + " mappings or lists");
    }
  }

  const std::string& source_;
  const std::string& what_;
  const YamlLimits& limits_;
  int64_t nodes_ = 0;
  int depth_ = 0;
  std::vector<std::string> anchors_;
};

}  // namespace

Status CheckYaml(const std::string& text, const std::string& source, const std::string& what,
                 const YamlLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return InvalidArgumentError(source + ": " + std::to_string(text.size()) + " bytes; " + what +
                                " are at most " + std::to_string(limits.max_bytes) + " bytes");
  }
  std::istringstream in(text);
  Guard guard(source, what, limits);
  try {
    YAML::Parser parser(in);
    parser.HandleNextDocument(guard);  // the first document: all YAML::Load reads
  } catch (const Refused& r) {
    return r.status;
  } catch (const YAML::Exception&) {
    // Not valid YAML: the caller's YAML::Load says where and why, in its own words.
  }
  return Status::Ok();
}

}  // namespace rmgen
