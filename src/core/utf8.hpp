// sparsa: UTF-8 validation of text that ends up in HDF5 strings marked UTF-8 (record names,
// descriptions, timestamps): h5py and other readers fail on invalid bytes; and the small text
// helpers the input readers share.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace sparsa {

// A field without the spaces and tabs around it (and a CR left at its end by a CRLF line).
inline std::string_view trim_blanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// "0xFC": a byte as messages show it.
inline std::string hex_byte(unsigned char c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02X", c);
  return buf;
}

// Index of the first byte of `s` that does not begin a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points past U+10FFFF are invalid), or npos when all of `s` is UTF-8.
inline size_t first_invalid_utf8(std::string_view s) {
  const auto* u = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII runs 8 bytes at a time (no byte with its high bit set): most text is all ASCII
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, u + i, 8);
      if (const uint64_t high = w & 0x8080808080808080ull) {
        // to the first byte with its high bit set (the lowest address is the low byte)
        if constexpr (std::endian::native == std::endian::little) i += std::countr_zero(high) / 8;
        break;
      }
      i += 8;
    }
    if (i >= n) break;
    const unsigned c = u[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > n || u[i + 1] < lo || u[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (u[i + k] < 0x80 || u[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

}  // namespace sparsa
