#include "core/file_text.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "core/error.hpp"

namespace sparsa {

namespace {

// The mapped files the SIGBUS handler knows: [lo, hi) and the message it writes (made when the
// file is mapped: the handler only reads it). A slot is free while hi is 0.
struct Watched {
  std::atomic<uintptr_t> lo{0}, hi{0};
  char message[1024];
};
Watched g_watched[64];
std::mutex g_watch_mutex;        // taken by the mapping threads, never by the handler
struct sigaction g_previous {};  // SIGBUS's action before ours

extern "C" void on_sigbus(int sig, siginfo_t* info, void* ctx) {
  // A fault of the hardware or kernel (si_code > 0) has an address; a SIGBUS sent by a process
  // has none.
  const uintptr_t a = info && info->si_code > 0 ? reinterpret_cast<uintptr_t>(info->si_addr) : 0;
  for (Watched& w : g_watched) {
    const uintptr_t hi = w.hi.load(std::memory_order_acquire);
    if (hi != 0 && a >= w.lo.load(std::memory_order_relaxed) && a < hi) {
      const size_t n = strnlen(w.message, sizeof w.message);
      ssize_t ignored = write(2, w.message, n);
      (void)ignored;
      _exit(kExitError);
    }
  }
  // Not one of ours: the handler before ours (Open MPI's backtrace, ASan's report), called as
  // it would have been, ours staying in place for the other threads; without one (default or
  // ignored), the default action, as before ours: the process ends.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) return g_previous.sa_sigaction(sig, info, ctx);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    return g_previous.sa_handler(sig);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

int watch(const void* p, size_t size, const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGBUS, &sa, &g_previous);
  });
  std::lock_guard<std::mutex> lock(g_watch_mutex);
  for (int i = 0; i < (int)std::size(g_watched); ++i) {
    Watched& w = g_watched[i];
    if (w.hi.load(std::memory_order_relaxed) != 0) continue;
    std::snprintf(w.message, sizeof w.message,
                  "sparsa: error: %s: the file shrank while sparsa was reading it (another "
                  "program truncated or rewrote it); the run stopped. Inputs must not change "
                  "during a run: rerun once the file is final (where the run left a journal, "
                  "OUTPUT.parts/, --resume keeps its finished records, each checked against the "
                  "input again)\n",
                  path.c_str());
    w.lo.store(reinterpret_cast<uintptr_t>(p), std::memory_order_relaxed);
    w.hi.store(reinterpret_cast<uintptr_t>(p) + size, std::memory_order_release);
    return i;
  }
  return -1;  // 64 files mapped at once: this one has no handler (a bare SIGBUS, as before)
}

}  // namespace

FileText::FileText(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    void* p = ::mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p != MAP_FAILED) {
      ::madvise(p, (size_t)st.st_size, MADV_SEQUENTIAL);
      map_ = p;
      size_ = (size_t)st.st_size;
      slot_ = watch(p, size_, path);
    }
  }
  if (fd >= 0) ::close(fd);
  if (!map_) read_ = read_file_text(path);
}

FileText::~FileText() {
  if (!map_) return;
  if (slot_ >= 0) {
    std::lock_guard<std::mutex> lock(g_watch_mutex);
    g_watched[slot_].hi.store(0, std::memory_order_release);
  }
  ::munmap(map_, size_);
}

std::string FileText::read_file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(where(path, "", 0, "cannot open file"));
  std::string text;
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec && size > 0) {  // a regular file: read it in one piece (no stream copy)
    text.resize((size_t)size);
    in.read(text.data(), (std::streamsize)size);
    text.resize((size_t)in.gcount());
    if (in.bad()) throw InputError(where(path, "", 0, "read error"));
    if (in.peek() == std::char_traits<char>::eof()) return text;
    in.clear();  // it grew while being read: the rest as a stream
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError(where(path, "", 0, "read error"));
  return text + std::move(ss).str();
}

}  // namespace sparsa
