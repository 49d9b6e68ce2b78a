// The one pybind11 bindings file of kvi_engine._core. Algorithms live in csrc/kvi/*.h
// (no pybind11 there); this file only converts arguments, releases the GIL and maps errors:
// std::invalid_argument -> ValueError (pybind11's default), std::out_of_range -> IndexError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "kvi-engine native core (graph store, traversal, entity linker, bank codecs, CPU attention)";
    m.attr("__version__") = "0.1.0";
    m.def("num_threads_default", []() { return 0; },
          "Threads used by batched calls when num_threads=0 (0 = hardware concurrency).");
}
