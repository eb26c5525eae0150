// The projection family's binding (projection.h), written once for both modules: B is the backend
// (csrc/bind/common.h).  Python names: proj_count, proj_fill, proj_{matvec,rmatvec}_implicit and, where
// B::kSegmentProducts (CUDA), proj_{matvec,rmatvec}_indices.
#pragma once
#include "bind/pybind.h"

namespace lscape::bind {

template <class B>
void bind_projection(py::module_& m) {
  m.def("proj_count", [](const SpecTuple& st, uintptr_t seg_counts, uintptr_t col_counts, Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    need(col_counts, "col_counts", "proj_count");
    check(B::count(s, ptr<uint32_t>(seg_counts), ptr<int64_t>(col_counts), tail), B::kModule, "proj_count");
  }, "Nonzeros per segment (seg_counts, may be 0) and per column", py::arg("spec"), py::arg("seg_counts"),
     py::arg("col_counts"), py::arg(B::kTail), nogil);

  m.def("proj_fill", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                        Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    need(seg_start, "seg_start", "proj_fill");
    need(chunk_ptr, "chunk_ptr", "proj_fill");
    check(B::fill(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr), ptr<int32_t>(indices), tail),
          B::kModule, "proj_fill");
  }, "Packed indices into the storage layout of projection.h", py::arg("spec"), py::arg("seg_start"),
     py::arg("chunk_ptr"), py::arg("indices"), py::arg(B::kTail), nogil);

  // The products on the stored kind's segments (CUDA only: the CPU re-lays them as SELL).
  if constexpr (B::kSegmentProducts) {
    auto product = [&](const char* name, bool transpose) {
      m.def(name, [transpose, name](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                                    uintptr_t scales, uintptr_t x, uintptr_t out, int64_t batch, bool f64,
                                    Tail<B> tail) {
        const proj::Spec s = to_spec(st);
        check_batch(batch);
        for (auto [a, arg] : {std::pair{seg_start, "seg_start"}, {chunk_ptr, "chunk_ptr"}, {scales, "scales"},
                              {x, "x"}, {out, "out"}})
          need(a, arg, name);
        const char* err = nullptr;
        by_dtype(f64, [&](auto t) {
          using T = decltype(t);
          err = B::template product_indices<T>(transpose, s, ptr<const int32_t>(seg_start),
                                               ptr<const int64_t>(chunk_ptr), ptr<const int32_t>(indices),
                                               ptr<const T>(scales), ptr<const T>(x), ptr<T>(out), batch, tail);
        });
        check(err, B::kModule, name);
      }, py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"), py::arg("indices"), py::arg("scales"),
         py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"), py::arg(B::kTail), nogil);
    };
    product("proj_matvec_indices", false);
    product("proj_rmatvec_indices", true);
  }

  auto implicit = [&](const char* name, bool transpose) {
    m.def(name, [transpose, name](const SpecTuple& st, uintptr_t scales, uintptr_t x, uintptr_t out, int64_t batch,
                                  bool f64, Tail<B> tail) {
      const proj::Spec s = to_spec(st);
      check_batch(batch);
      for (auto [a, arg] : {std::pair{scales, "scales"}, {x, "x"}, {out, "out"}}) need(a, arg, name);
      const char* err = nullptr;
      by_dtype(f64, [&](auto t) {
        using T = decltype(t);
        err = B::template product_implicit<T>(transpose, s, ptr<const T>(scales), ptr<const T>(x), ptr<T>(out),
                                              batch, tail);
      });
      check(err, B::kModule, name);
    }, py::arg("spec"), py::arg("scales"), py::arg("x"), py::arg("out"), py::arg("B"), py::arg("f64"),
       py::arg(B::kTail), nogil);
  };
  implicit("proj_matvec_implicit", false);
  implicit("proj_rmatvec_implicit", true);
}

// The CPU's SELL-C-sigma layout of the stored kind (projection.h): proj_sell_plan, proj_sell_fill,
// proj_{matvec,rmatvec}_sell, and its column-band copy: proj_bands_plan, proj_bands_fill,
// proj_{matvec,rmatvec}_bands.  B provides sell_plan, sell_fill, product_sell, bands_plan, bands_fill and
// product_bands.
template <class B>
void bind_projection_sell(py::module_& m) {
  m.def("proj_sell_plan", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                             uintptr_t perm, uintptr_t widths, Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    for (auto [a, arg] : {std::pair{seg_start, "seg_start"}, {chunk_ptr, "chunk_ptr"}, {perm, "perm"},
                          {widths, "widths"}})
      need(a, arg, "proj_sell_plan");
    check(B::sell_plan(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr), ptr<const int32_t>(indices),
                       ptr<uint16_t>(perm), ptr<int32_t>(widths), tail), B::kModule, "proj_sell_plan");
  }, "Row order (perm) and slice widths of the SELL-C-sigma layout", py::arg("spec"), py::arg("seg_start"),
     py::arg("chunk_ptr"), py::arg("indices"), py::arg("perm"), py::arg("widths"), py::arg(B::kTail), nogil);

  m.def("proj_sell_fill", [](const SpecTuple& st, uintptr_t seg_start, uintptr_t chunk_ptr, uintptr_t indices,
                             uintptr_t perm, uintptr_t slice_ptr, uintptr_t cols, Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    for (auto [a, arg] : {std::pair{seg_start, "seg_start"}, {chunk_ptr, "chunk_ptr"}, {perm, "perm"},
                          {slice_ptr, "slice_ptr"}})
      need(a, arg, "proj_sell_fill");
    check(B::sell_fill(s, ptr<const int32_t>(seg_start), ptr<const int64_t>(chunk_ptr), ptr<const int32_t>(indices),
                       ptr<const uint16_t>(perm), ptr<const int64_t>(slice_ptr), ptr<void>(cols), tail),
          B::kModule, "proj_sell_fill");
  }, "Entries of the SELL-C-sigma layout", py::arg("spec"), py::arg("seg_start"), py::arg("chunk_ptr"),
     py::arg("indices"), py::arg("perm"), py::arg("slice_ptr"), py::arg("cols"), py::arg(B::kTail), nogil);

  auto product = [&](const char* name, bool transpose) {
    m.def(name, [transpose, name](const SpecTuple& st, uintptr_t perm, uintptr_t slice_ptr, uintptr_t cols,
                                  uintptr_t scales, uintptr_t x, uintptr_t out, int64_t batch, bool f64, Tail<B> tail) {
      const proj::Spec s = to_spec(st);
      check_batch(batch);
      for (auto [a, arg] : {std::pair{perm, "perm"}, {slice_ptr, "slice_ptr"}, {scales, "scales"}, {x, "x"},
                            {out, "out"}})
        need(a, arg, name);
      const char* err = nullptr;
      by_dtype(f64, [&](auto t) {
        using T = decltype(t);
        err = B::template product_sell<T>(transpose, s, ptr<const uint16_t>(perm), ptr<const int64_t>(slice_ptr),
                                          ptr<const void>(cols), ptr<const T>(scales), ptr<const T>(x), ptr<T>(out),
                                          batch, tail);
      });
      check(err, B::kModule, name);
    }, py::arg("spec"), py::arg("perm"), py::arg("slice_ptr"), py::arg("cols"), py::arg("scales"), py::arg("x"),
       py::arg("out"), py::arg("B"), py::arg("f64"), py::arg(B::kTail), nogil);
  };
  product("proj_matvec_sell", false);
  product("proj_rmatvec_sell", true);

  // The column-band copy (projection.h): proj_bands_plan, proj_bands_fill, proj_{matvec,rmatvec}_bands (B = 1).
  m.def("proj_bands_plan", [](const SpecTuple& st, int64_t nb, int64_t window, uintptr_t perm, uintptr_t slice_ptr,
                              uintptr_t cols, uintptr_t bperm, uintptr_t widths, Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    check_bands(nb, window, "proj_bands_plan");
    for (auto [a, arg] : {std::pair{perm, "perm"}, {slice_ptr, "slice_ptr"}, {bperm, "bperm"}, {widths, "widths"}})
      need(a, arg, "proj_bands_plan");
    check(B::bands_plan(s, nb, window, ptr<const uint16_t>(perm), ptr<const int64_t>(slice_ptr),
                        ptr<const void>(cols), ptr<uint16_t>(bperm), ptr<int32_t>(widths), tail),
          B::kModule, "proj_bands_plan");
  }, "Row order (bperm) and block widths of the column-band copy", py::arg("spec"), py::arg("nb"),
     py::arg("window"), py::arg("perm"), py::arg("slice_ptr"), py::arg("cols"), py::arg("bperm"), py::arg("widths"),
     py::arg(B::kTail), nogil);

  m.def("proj_bands_fill", [](const SpecTuple& st, int64_t nb, int64_t window, uintptr_t perm, uintptr_t slice_ptr,
                              uintptr_t cols, uintptr_t bperm, uintptr_t band_ptr, uintptr_t bcols, Tail<B> tail) {
    const proj::Spec s = to_spec(st);
    check_bands(nb, window, "proj_bands_fill");
    for (auto [a, arg] : {std::pair{perm, "perm"}, {slice_ptr, "slice_ptr"}, {bperm, "bperm"},
                          {band_ptr, "band_ptr"}})
      need(a, arg, "proj_bands_fill");
    check(B::bands_fill(s, nb, window, ptr<const uint16_t>(perm), ptr<const int64_t>(slice_ptr),
                        ptr<const void>(cols), ptr<const uint16_t>(bperm), ptr<const int64_t>(band_ptr),
                        ptr<void>(bcols), tail),
          B::kModule, "proj_bands_fill");
  }, "Entries of the column-band copy", py::arg("spec"), py::arg("nb"), py::arg("window"), py::arg("perm"),
     py::arg("slice_ptr"), py::arg("cols"), py::arg("bperm"), py::arg("band_ptr"), py::arg("bcols"),
     py::arg(B::kTail), nogil);

  auto bands = [&](const char* name, bool transpose) {
    m.def(name, [transpose, name](const SpecTuple& st, int64_t nb, int64_t window, uintptr_t bperm,
                                  uintptr_t bwidth, uintptr_t bstart, uintptr_t bcols, uintptr_t scales, uintptr_t x,
                                  uintptr_t out, bool f64, Tail<B> tail) {
      const proj::Spec s = to_spec(st);
      check_bands(nb, window, name);
      for (auto [a, arg] : {std::pair{bperm, "bperm"}, {bwidth, "bwidth"}, {bstart, "bstart"}, {scales, "scales"},
                            {x, "x"}, {out, "out"}})
        need(a, arg, name);
      const char* err = nullptr;
      by_dtype(f64, [&](auto t) {
        using T = decltype(t);
        err = B::template product_bands<T>(transpose, s, nb, window, ptr<const uint16_t>(bperm),
                                           ptr<const uint16_t>(bwidth), ptr<const int64_t>(bstart),
                                           ptr<const void>(bcols), ptr<const T>(scales), ptr<const T>(x), ptr<T>(out),
                                           tail);
      });
      check(err, B::kModule, name);
    }, "One vector's product on the column-band copy", py::arg("spec"), py::arg("nb"), py::arg("window"),
       py::arg("bperm"), py::arg("bwidth"), py::arg("bstart"), py::arg("bcols"), py::arg("scales"), py::arg("x"),
       py::arg("out"), py::arg("f64"), py::arg(B::kTail), nogil);
  };
  bands("proj_matvec_bands", false);
  bands("proj_rmatvec_bands", true);
}

}  // namespace lscape::bind
