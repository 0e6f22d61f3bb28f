// sparsa core: large host arrays.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace sparsa {

// v = n value-initialized elements in fresh memory whose pages are first advised huge
// (transparent huge pages, where the kernel allows them; advice only). A record's arrays are GBs
// and every fresh 4 KB page costs a fault: 4 GB of new pages took 17 s on a 2-core VM, 6 s advised.
template <class T>
void resize_huge(std::vector<T>& v, size_t n) {
  v.clear();
  v.shrink_to_fit();
  v.reserve(n);
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t a = ((uintptr_t)v.data() + kHuge - 1) & ~(kHuge - 1),
                  e = (uintptr_t)(v.data() + n) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  v.resize(n);
}

}  // namespace sparsa
