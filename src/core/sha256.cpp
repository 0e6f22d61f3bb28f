#include "core/sha256.hpp"

#include <openssl/evp.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <vector>

#include "core/error.hpp"

namespace sparsa {

namespace {
std::string to_hex(const unsigned char* md, unsigned len) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}
}  // namespace

struct Sha256::Impl {
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx{EVP_MD_CTX_new(), EVP_MD_CTX_free};
};
Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  if (!impl_->ctx || EVP_DigestInit_ex(impl_->ctx.get(), EVP_sha256(), nullptr) != 1)
    throw SystemError("SHA-256: OpenSSL could not start a digest");
}
Sha256::~Sha256() = default;
void Sha256::update(const void* data, size_t bytes) {
  if (bytes > 0) EVP_DigestUpdate(impl_->ctx.get(), data, bytes);
}
void Sha256::update_field(std::string_view s) {
  const uint64_t n = s.size();
  update(&n, sizeof n);
  update(s.data(), s.size());
}
std::string Sha256::hex() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx.get(), md, &len);
  return to_hex(md, len);
}

std::string sha256_file(const std::string& path, const std::atomic<bool>* cancel) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!f) throw SystemError(path + ": cannot open for hashing");
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<unsigned char> buf(1 << 20);
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    if (cancel && cancel->load()) return "";
    EVP_DigestUpdate(ctx.get(), buf.data(), got);
  }
  if (std::ferror(f.get())) throw SystemError(path + ": read error while hashing");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  return to_hex(md, len);
}

}  // namespace sparsa
