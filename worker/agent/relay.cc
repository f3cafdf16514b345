// The event relay: a running attempt's new events.jsonl lines, sent to ReportEvents in
// bounded batches (agent_impl.h has who calls what from which thread).
#include <fcntl.h>
#include <google/protobuf/util/json_util.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <thread>

#include "common/file.h"
#include "common/limits.h"
#include "common/utf8.h"
#include "jobspec/run_dir.h"
#include "worker/agent/agent_impl.h"
#include "worker/agent/supervisor.h"

namespace rmgen::agent {

namespace fs = std::filesystem;

// A line of events.jsonl that is no event (bad JSON, no integer step, too long): skipped,
// counted, and the first few described in the job's log.
void Agent::Impl::SkipLine(Attempt* a, uint64_t ino, int64_t end, const std::string& why) {
  if (ino == a->bad_ino && end <= a->bad_end) return;  // counted when first read
  a->bad_ino = ino;
  a->bad_end = end;
  if (++a->skipped_lines > kNotedBadLines) return;
  NoteInJobLog(*a, "events.jsonl: skipped the line ending at byte " + std::to_string(end) + ": " +
                       why +
                       (a->skipped_lines == kNotedBadLines ? " (further ones only counted)" : ""));
}

// The attempt is no longer this agent's (cancelled, stale): its ranks stop, nothing more
// is reported about it.
void Agent::Impl::TakenBack(Attempt* a, const std::string& why) {
  if (a->cancelled.exchange(true)) return;
  Log("job " + a->job_id + ": " + why + "; stopping its ranks");
  (void)SignalSupervisor(a->supervisor, a->tag);
}

// One ReportEvents call with events[from, from + n) (none: the RUNNING announcement), made
// with session `used`.
grpc::Status Agent::Impl::SendEvents(const Attempt& a, const std::vector<PendingEvent>& events,
                                     size_t from, size_t n, const std::string& used,
                                     pb::ReportEventsResponse* resp) {
  pb::ReportEventsRequest r;
  r.set_job_id(a.job_id);
  r.set_attempt(a.attempt);
  r.set_running(true);
  r.set_worker_id(o.id);
  r.set_session(used);
  for (size_t k = from; k < from + n; ++k) *r.add_events() = events[k].event;
  auto c = Ctx(10'000);
  auto w = stub->ReportEvents(c.get(), resp);
  w->Write(r);
  w->WritesDone();
  return w->Finish();
}

// Sends the new events of events.jsonl: objects with an integer step after the last one
// relayed, at most kRelayBatch of them and kRelayBytes encoded per call. Lines that are no
// event are skipped (SkipLine), over-long ones without being held in memory. A batch the
// coordinator refuses for its content (anything but unreachable, UNAUTHENTICATED or a stale
// attempt) is halved and sent again; a single refused event is dropped and counted. So
// nothing in the file stops the relay, and the job goes on. Never throws on the file's
// content.
Relayed Agent::Impl::Relay(Attempt* a) {
  const std::string path = run_dir::Events(a->out_dir);
  std::vector<PendingEvent> events;
  LineCursor cursor = a->cursor;  // replaces a's once the events are delivered
  uint64_t ino = a->events_ino;
  int64_t top = a->relayed_step;
  size_t bytes = 0;
  bool more = false;
  // The file is identified by its inode: the one opened here is the one read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd >= 0 && ::fstat(fd, &st) == 0 && st.st_ino != a->stale_events) {
    // Another file than the one read so far (the trainer rewrote it), or shorter: from 0.
    if (st.st_ino != ino || st.st_size < cursor.offset) cursor = LineCursor();
    ino = st.st_ino;
    auto line = [&](std::string_view text, int64_t end) {
      if (events.size() >= kRelayBatch) {
        more = true;
        return false;
      }
      ParsedEvent p = ParseEventLine(text);
      if (!p.ok()) {
        SkipLine(a, ino, end, p.error + ": " + SanitizeUtf8(text, 80));
        return true;
      }
      if (p.step <= top) return true;  // relayed before (or repeated by a resumed attempt)
      PendingEvent e;
      if (!ToStruct(p.event, &e.event)) {
        SkipLine(a, ino, end, "not representable as a protobuf Struct");
        return true;
      }
      const size_t size = e.event.ByteSizeLong();
      if (size > kRelayBytes) {
        SkipLine(a, ino, end, "an event of " + std::to_string(size) + " bytes encoded");
        return true;
      }
      if (!events.empty() && bytes + size > kRelayBytes) {
        more = true;
        return false;
      }
      bytes += size;
      top = p.step;
      e.step = p.step;
      e.end = end;
      events.push_back(std::move(e));
      return true;
    };
    auto too_long = [&](int64_t end) {
      SkipLine(a, ino, end, "longer than " + std::to_string(kMaxEventLine) + " bytes");
    };
    (void)ScanLines(fd, kMaxEventLine, &cursor, line, too_long);
  }
  if (fd >= 0) ::close(fd);
  // Delivered: events[0, upto) (all: everything read, skipped lines included).
  // `announced` is set only by a call the coordinator took (each carries running=true): an
  // announcement that failed for want of a coordinator is made again at the next poll.
  auto commit = [&](size_t upto, bool all) {
    if (all) {
      a->cursor = cursor;
      a->events_ino = ino;
    } else if (upto > 0) {
      a->cursor = LineCursor{events[upto - 1].end, false};
      a->events_ino = ino;
    }
    if (upto > 0 && events[upto - 1].step > a->relayed_step) {
      a->relayed_step = events[upto - 1].step;
      (void)a->Save();
    }
  };
  if (events.empty() && a->announced) {
    commit(0, true);
    return Relayed::kDone;
  }
  size_t from = 0, chunk = std::max<size_t>(1, events.size());
  do {
    const size_t n = std::min(chunk, events.size() - from);
    pb::ReportEventsResponse resp;
    const std::string used = Session();
    grpc::Status s = SendEvents(*a, events, from, n, used, &resp);
    if (s.ok()) {
      a->announced = true;
      from += n;
      prom.Inc("rmgen_agent_events_relayed_total", {}, double(n));
      commit(from, from == events.size());
      if (resp.cancel()) TakenBack(a, "cancelled");
      continue;
    }
    if (Later(s, used)) {
      commit(from, false);
      return Relayed::kLater;
    }
    if (Stale(s)) {
      commit(events.size(), true);
      TakenBack(a, Error(s));
      return Relayed::kDone;
    }
    if (n > 1) {
      chunk = (n + 1) / 2;
      continue;
    }
    if (n == 0) {  // the announcement alone, refused: the next batch announces again
      Log("job " + a->job_id + ": the coordinator refused the RUNNING report: " + Error(s));
      a->announced = true;
      commit(0, true);
      return Relayed::kDone;
    }
    ++a->refused_events;
    Log("job " + a->job_id + ": the coordinator refused the event of step " +
        std::to_string(events[from].step) + " (" + Error(s) + "); dropped");
    if (a->refused_events <= kNotedBadLines) {
      NoteInJobLog(*a, "the coordinator refused the event of step " +
                           std::to_string(events[from].step) + ": " + Error(s));
    }
    ++from;
    commit(from, from == events.size());
  } while (from < events.size());
  return more ? Relayed::kMore : Relayed::kDone;
}

// Relay, noting since when the attempt has events the coordinator does not have yet.
Relayed Agent::Impl::RelayTimed(Attempt* a) {
  const Relayed r = Relay(a);
  if (r == Relayed::kDone) {
    a->behind_since_ms = 0;
  } else if (a->behind_since_ms == 0) {
    a->behind_since_ms = MonoMs();
  }
  return r;
}

}  // namespace rmgen::agent
