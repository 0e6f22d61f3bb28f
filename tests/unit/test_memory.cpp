// The host-memory check's reading of cgroups (core/memory.cpp), on fake /proc and /sys trees.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/memory.hpp"
#include "test_util.hpp"

using namespace sparsa::testing;

namespace {
void put(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  write_file(path, text);
}
}  // namespace

// cgroup v2 under Slurm: the task's own cgroup sets no limit, the job's does (--mem); the page
// cache that can be dropped counts as free; the least room of the chain wins.
TEST(HostMemory, CgroupV2LimitAboveTheTaskIsFound) {
  TempDir t;
  const std::string sys = t / "sys", job = sys + "/system.slice/job_7",
                    task = job + "/step_0/task_0";
  put(t / "cgroup", "0::/system.slice/job_7/step_0/task_0\n");
  put(task + "/memory.max", "max\n");
  put(task + "/memory.current", "100\n");
  put(job + "/step_0/memory.max", "max\n");
  put(job + "/memory.max", "4000\n");
  put(job + "/memory.current", "3000\n");
  put(job + "/memory.stat", "anon 1000\nfile 2000\ninactive_file 1500\nactive_file 500\n");
  // 4000 - (3000 - 1500 of inactive page cache)
  EXPECT_EQ(sparsa::cgroup_room(t / "cgroup", sys), 2500);
  put(sys + "/system.slice/memory.max", "2000\n");  // a tighter limit higher up
  put(sys + "/system.slice/memory.current", "1900\n");
  EXPECT_EQ(sparsa::cgroup_room(t / "cgroup", sys), 100);
  put(t / "cgroup", "0::/elsewhere\n");  // no limit anywhere on the way
  EXPECT_EQ(sparsa::cgroup_room(t / "cgroup", sys), -1);
  EXPECT_EQ(sparsa::cgroup_room(t / "missing", sys), -1);
}

// cgroup v1: the memory controller's line; "no limit" is a number near 2^63.
TEST(HostMemory, CgroupV1MemoryControllerLine) {
  TempDir t;
  const std::string mem = t / "sys/memory";
  put(t / "cgroup", "5:cpu,cpuacct:/slurm/uid_0/job_9\n4:memory:/slurm/uid_0/job_9/step_0\n");
  put(mem + "/slurm/uid_0/job_9/step_0/memory.limit_in_bytes", "9223372036854771712\n");
  put(mem + "/slurm/uid_0/job_9/step_0/memory.usage_in_bytes", "10\n");
  put(mem + "/slurm/uid_0/job_9/memory.limit_in_bytes", "1000000\n");
  put(mem + "/slurm/uid_0/job_9/memory.usage_in_bytes", "600000\n");
  put(mem + "/slurm/uid_0/job_9/memory.stat", "cache 5\ntotal_inactive_file 100000\n");
  EXPECT_EQ(sparsa::cgroup_room(t / "cgroup", t / "sys"), 500000);
  put(mem + "/slurm/uid_0/job_9/memory.usage_in_bytes", "2000000\n");  // over: no room
  put(mem + "/slurm/uid_0/job_9/memory.stat", "");
  EXPECT_EQ(sparsa::cgroup_room(t / "cgroup", t / "sys"), 0);
}

// This machine: a number of bytes no larger than its memory, or -1 where nothing can be read.
TEST(HostMemory, AvailableIsAtMostTheMachinesMemory) {
  const int64_t a = sparsa::host_memory_available();
  EXPECT_TRUE(a == -1 || a > 0) << a;
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  in >> key >> kb;  // MemTotal:
  if (key == "MemTotal:") {
    EXPECT_LE(a, kb * 1024);
  }
}
