// Fuzzes load_checkpoint: the input bytes are the .h5 file.
//
// HDF5 itself is Debian's uninstrumented build, so coverage guides the fuzzer through sparsa's
// checks (attributes, config, shapes, types, values) rather than through HDF5's own parser; the
// seed corpus (a real tiny checkpoint and damaged copies of it) starts it past the file format.
#include <cmath>
#include <string>

#include "core/error.hpp"
#include "fuzz_util.hpp"
#include "model/weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sparsa::fuzz::invariant_failed;
  const std::string path = sparsa::fuzz::write_temp("model.h5", data, size);
  try {
    sparsa::ModelWeights w = sparsa::load_checkpoint(path);
    // A checkpoint that loads has every tensor at its config's shape, all finite.
    for (auto& t : sparsa::tensor_list(w)) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      if ((int64_t)t.data->size() != n) invariant_failed(t.name + ": size differs from shape");
      for (float v : *t.data)
        if (!std::isfinite(v)) invariant_failed(t.name + ": non-finite value accepted");
    }
  } catch (const sparsa::Error&) {
  }
  return 0;
}
