// The CPU kernels compiled for avx2 (flags in CMakeLists.txt).
#define FUSEDRNN_ISA isa_avx2
#include "cpu/kernels.inc"
