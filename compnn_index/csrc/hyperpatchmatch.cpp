// HyperPatch-Match native kernel (placeholder until the kernel lands).
#include <pybind11/pybind11.h>
PYBIND11_MODULE(_hpm, m) { m.doc() = "HyperPatch-Match kernel"; }
