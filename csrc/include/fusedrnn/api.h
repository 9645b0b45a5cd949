#pragma once
// C++ entry points of the CPU backend. Bindings include only this header.
#include <string>

#include "fusedrnn/params.h"

namespace fusedrnn {

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p);
template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p);

// Threads used by the OpenMP regions and the BLAS (both, never nested).
void set_num_threads(int n);
int get_num_threads();

std::string blas_name();
std::string blas_config();
std::string blas_core();
std::string simd_compiled();  // instruction sets the compiler was allowed to use
std::string simd_cpu();       // what the running CPU supports (best first)

}  // namespace fusedrnn
