// The CPU kernels compiled for avx512 (flags in CMakeLists.txt).
#define FUSEDRNN_ISA isa_avx512
#include "cpu/kernels.inc"
