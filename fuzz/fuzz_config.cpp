// Fuzzes parse_model_config (TOML text -> ModelConfig): the input bytes are the config text.
//
// A config that parses must survive the round trip through to_toml(), which is echoed into every
// output file and read back from checkpoints: parsing that text gives the same config again.
#include <string>

#include "core/config.hpp"
#include "core/error.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sparsa::fuzz::invariant_failed;
  const std::string text(reinterpret_cast<const char*>(data), size);
  sparsa::ModelConfig c;
  try {
    c = sparsa::parse_model_config(text, "fuzz.toml");
  } catch (const sparsa::Error&) {
    return 0;
  }
  // Everything a model later derives from the config must be computable without a trap.
  (void)c.head_dim();
  (void)c.vocab();
  (void)c.n_tables();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000), int64_t(1) << 40})
    if (c.n_global(n) < 0 || c.n_global(n) > n) invariant_failed("n_global out of [0, n]");

  const std::string echoed = c.to_toml();
  sparsa::ModelConfig back;
  try {
    back = sparsa::parse_model_config(echoed, "echo.toml");
  } catch (const sparsa::Error& e) {
    invariant_failed("to_toml() of a valid config does not parse: " + std::string(e.what()) + "\n" +
                     echoed);
  }
  if (back.to_toml() != echoed)
    invariant_failed("to_toml() round trip changed the config:\n" + echoed);
  return 0;
}
