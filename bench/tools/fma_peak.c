/* FMA ceiling: 12 independent chains of 512-bit float FMAs per thread, on 1 and 2 threads.
 * (On this VM's AMD EPYC one 512-bit FMA retires per cycle per core, so a large OpenBLAS
 * SGEMM runs at about this rate: the compute ceiling of the harness's "ceil" column.)
 *   gcc -O3 -mavx512f -fopenmp bench/tools/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

int main(void) {
  const long iters = 50000000; /* per thread, 12 FMAs each */
  for (int nt = 1; nt <= 2; ++nt) {
    float sink = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nt) reduction(+ : sink)
    {
      __m512 acc[12];
      for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps(i * 0.001f);
      const __m512 x = _mm512_set1_ps(0.999f), y = _mm512_set1_ps(0.0001f);
      for (long k = 0; k < iters; k++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
      for (int i = 1; i < 12; i++) acc[0] = _mm512_add_ps(acc[0], acc[i]);
      sink += _mm512_reduce_add_ps(acc[0]);
    }
    const double t = omp_get_wtime() - t0;
    printf("%d thread(s): %.1f GFLOP/s%s\n", nt, nt * iters * 12.0 * 32 / t / 1e9, sink == 0 ? "?" : "");
  }
  return 0;
}
