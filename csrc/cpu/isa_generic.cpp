// The CPU kernels compiled for generic (flags in CMakeLists.txt).
#define FUSEDRNN_ISA isa_generic
#include "cpu/kernels.inc"
