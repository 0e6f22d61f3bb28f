// Exact comparison of two embeddings files: every dataset of every record, bit for bit.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "io/h5.hpp"

namespace sparsa::testing {

inline void expect_same_contents(const std::string& a, const std::string& b) {
  auto fa = h5::File::open_read(a), fb = h5::File::open_read(b);
  ASSERT_EQ(fa.attr_int("/", "complete"), 1) << a;
  ASSERT_EQ(fb.attr_int("/", "complete"), 1) << b;
  const auto keys = fa.list("/records");
  ASSERT_EQ(keys, fb.list("/records"));
  for (const auto& k : keys) {
    const std::string g = "/records/" + k;
    EXPECT_EQ(fa.attr_int(g, "length"), fb.attr_int(g, "length")) << k;
    EXPECT_EQ(fa.attr_string(g, "name"), fb.attr_string(g, "name")) << k;
    for (const char* ds : {"embedding", "global_scores"}) {
      auto x = fa.read_f32(g + "/" + ds), y = fb.read_f32(g + "/" + ds);
      ASSERT_EQ(x.size(), y.size()) << k << "/" << ds;
      EXPECT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << k << "/" << ds << " differs";
    }
    for (const char* ds : {"global_positions", "bin_start", "bin_end"})
      EXPECT_EQ(fa.read_i64(g + "/" + ds), fb.read_i64(g + "/" + ds)) << k << "/" << ds;
  }
}

}  // namespace sparsa::testing
