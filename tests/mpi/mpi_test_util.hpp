// Shared by the multi-process tests: the mpirun prefix, a model from a TOML text, and one rank's
// output against P ranks', bit for bit.
#pragma once
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../unit/compare_h5.hpp"
#include "../unit/test_util.hpp"

namespace sparsa::testing {

// "mpiexec -np NP " (the build's, or SPARSA_TEST_MPIEXEC on another machine).
inline std::string mpirun(int np) {
  const char* e = std::getenv("SPARSA_TEST_MPIEXEC");
  return std::string(e && e[0] ? e : SPARSA_MPIEXEC) + " -np " + std::to_string(np) + " ";
}

// `sparsa init --seed 11` of the config text `toml` into DIR/NAME.h5.
inline std::string make_model(const TempDir& t, const std::string& name, const std::string& toml) {
  write_file(t / (name + ".toml"), toml);
  auto r = run(binary() + " init --seed 11 --config " + t / (name + ".toml") + " --output " +
               t / (name + ".h5"));
  EXPECT_EQ(r.code, 0) << r.output;
  return t / (name + ".h5");
}

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
