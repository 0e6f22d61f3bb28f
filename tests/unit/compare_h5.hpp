// Exact comparison of two embeddings files, as tests/slurm/h5same.py does it: every group,
// dataset (shape, type and bytes) and attribute under /records, and the root attributes but those
// that name the run rather than its results (created_utc, command_line, working_directory). Both
// files must be complete and hold at least one record.
#pragma once
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "cli/inspect.hpp"
#include "io/h5.hpp"

namespace sparsa::testing {

namespace detail {

inline std::vector<std::string> attr_names(const h5::File& f, const std::string& obj) {
  std::vector<std::string> names;
  H5Aiterate_by_name(
      f.id(), obj.c_str(), H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
        static_cast<std::vector<std::string>*>(out)->push_back(name);
        return 0;
      },
      &names, H5P_DEFAULT);
  return names;
}

// An attribute as text: its type class, then its value (strings and integers as sparsa writes
// them; anything else by its raw bytes).
inline std::string attr_text(const h5::File& f, const std::string& obj, const std::string& name) {
  h5::Handle a(H5Aopen_by_name(f.id(), obj.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT),
               H5Aclose);
  h5::Handle t(H5Aget_type(a.id()), H5Tclose);
  const H5T_class_t c = H5Tget_class(t.id());
  if (c == H5T_STRING) return "string:" + f.attr_string(obj, name);
  if (c == H5T_INTEGER) return "int:" + std::to_string(f.attr_int(obj, name));
  h5::Handle space(H5Aget_space(a.id()), H5Sclose);
  std::string raw(H5Tget_size(t.id()) * (size_t)H5Sget_simple_extent_npoints(space.id()), '\0');
  H5Aread(a.id(), t.id(), raw.data());
  return "class " + std::to_string((int)c) + ":" + raw;
}

// A dataset's bytes as stored (its file type); variable-length strings as their texts.
inline std::string dataset_bytes(const h5::File& f, const std::string& obj) {
  h5::Handle ds(H5Dopen2(f.id(), obj.c_str(), H5P_DEFAULT), H5Dclose);
  h5::Handle t(H5Dget_type(ds.id()), H5Tclose);
  h5::Handle space(H5Dget_space(ds.id()), H5Sclose);
  const auto n = (size_t)H5Sget_simple_extent_npoints(space.id());
  if (H5Tis_variable_str(t.id()) > 0) {
    std::vector<char*> s(n, nullptr);
    if (n > 0) H5Dread(ds.id(), t.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, s.data());
    std::string out;
    for (char* p : s) out += std::string(p ? p : "") + '\0';
    if (n > 0) H5Dvlen_reclaim(t.id(), space.id(), H5P_DEFAULT, s.data());
    return out;
  }
  std::string raw(H5Tget_size(t.id()) * n, '\0');
  if (n > 0) H5Dread(ds.id(), t.id(), H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data());
  return raw;
}

inline bool is_group(const h5::File& f, const std::string& obj) {
  H5O_info_t info;
  if (H5Oget_info_by_name(f.id(), obj.c_str(), &info, H5P_DEFAULT) < 0) return false;
  return info.type == H5O_TYPE_GROUP;
}

inline void expect_same_attrs(const h5::File& fa, const h5::File& fb, const std::string& obj,
                              const std::set<std::string>& skip = {}) {
  std::vector<std::string> na, nb;
  for (const auto& n : attr_names(fa, obj))
    if (!skip.count(n)) na.push_back(n);
  for (const auto& n : attr_names(fb, obj))
    if (!skip.count(n)) nb.push_back(n);
  ASSERT_EQ(na, nb) << obj << ": attributes differ";
  for (const auto& n : na)
    EXPECT_EQ(attr_text(fa, obj, n), attr_text(fb, obj, n)) << obj << ": attribute " << n;
}

inline void expect_same_tree(const h5::File& fa, const h5::File& fb, const std::string& obj) {
  expect_same_attrs(fa, fb, obj);
  const bool ga = is_group(fa, obj), gb = is_group(fb, obj);
  ASSERT_EQ(ga, gb) << obj << ": a group in one file, a dataset in the other";
  if (!ga) {
    EXPECT_EQ(fa.shape(obj), fb.shape(obj)) << obj;
    EXPECT_EQ(fa.type_name(obj), fb.type_name(obj)) << obj;
    EXPECT_TRUE(dataset_bytes(fa, obj) == dataset_bytes(fb, obj)) << obj << ": values differ";
    return;
  }
  const auto members = fa.list(obj);
  ASSERT_EQ(members, fb.list(obj)) << obj << ": members differ";
  for (const auto& m : members) expect_same_tree(fa, fb, obj + "/" + m);
}

}  // namespace detail

inline void expect_same_contents(const std::string& a, const std::string& b) {
  auto fa = h5::File::open_read(a), fb = h5::File::open_read(b);
  ASSERT_EQ(fa.attr_int("/", "complete"), 1) << a;
  ASSERT_EQ(fb.attr_int("/", "complete"), 1) << b;
  detail::expect_same_attrs(fa, fb, "/", {"created_utc", "command_line", "working_directory"});
  ASSERT_FALSE(fa.list("/records").empty()) << a << ": no records";
  detail::expect_same_tree(fa, fb, "/records");
  // Each a sound result as `sparsa inspect` judges it (bins, global sets, shapes, attributes).
  // (Journal parts, compared by the journal's tests, carry no file attributes: not results.)
  for (const std::string& path : {a, b})
    if (h5::File::open_read(path).has_attr("/", "format"))
      for (const std::string& why : embeddings_problems(path)) ADD_FAILURE() << path << ": " << why;
}

}  // namespace sparsa::testing
