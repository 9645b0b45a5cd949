#pragma once
// Macros shared by the CPU and CUDA backends.

#if defined(__CUDACC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined: the cell math must dissolve into the vectorised pointwise loops.
#define FUSEDRNN_HOST_DEVICE inline __attribute__((always_inline))
#else
#define FUSEDRNN_HOST_DEVICE inline
#endif

// Code compiled once per instruction set (cells, activations, the CPU driver) lives in an inline
// namespace named after it, so the copies built with different -m flags never share a symbol.
#ifndef FUSEDRNN_ISA
#define FUSEDRNN_ISA isa_generic
#endif
#define FUSEDRNN_ISA_BEGIN inline namespace FUSEDRNN_ISA {
#define FUSEDRNN_ISA_END }
