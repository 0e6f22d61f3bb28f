// Shared by the multi-process tests: one rank's output against P ranks', bit for bit.
#pragma once
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../unit/compare_h5.hpp"
#include "../unit/test_util.hpp"

namespace sparsa::testing {

// Runs `embed` (a command line ending in "--output ") alone into DIR/<tag>1.h5, then as
// `mpirun(np) + embed` into DIR/<tag>NP.h5 for each np, and expects the same contents.
template <class Mpirun>
void expect_same_on_ranks(const TempDir& t, const std::string& tag, const std::string& embed,
                          const std::vector<int>& ranks, Mpirun mpirun) {
  const std::string one = t / (tag + "1.h5");
  auto r = run(embed + one);
  ASSERT_EQ(r.code, 0) << r.output;
  for (int np : ranks) {
    const std::string out = t / (tag + std::to_string(np) + ".h5");
    r = run(mpirun(np) + embed + out);
    ASSERT_EQ(r.code, 0) << "np " << np << ": " << r.output;
    SCOPED_TRACE("np " + std::to_string(np));
    expect_same_contents(one, out);
  }
}

}  // namespace sparsa::testing
