/* Read-bandwidth ceiling for the small-batch recurrent step: each of 1 or 2 threads sums its
 * own buffer over and over (AVX-512 loads), for total sizes from L2 to beyond L3. The step at
 * B = 1 reads all of W_hh once, split the same way, so this is the most it can reach.
 *   gcc -O3 -mavx512f -fopenmp bench/tools/stream_read.c -o /tmp/stream_read && /tmp/stream_read
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
  printf("threads  total_KiB  GB/s (best of 3)\n");
  for (int nt = 1; nt <= 2; ++nt)
    for (size_t kib = 256; kib <= 65536; kib *= 2) {
      const size_t n = kib * 1024 / 4 / nt; /* floats per thread */
      double best = 0;
      float sink = 0;
#pragma omp parallel num_threads(nt) reduction(+ : sink)
      {
        float* a = aligned_alloc(64, n * 4);
        for (size_t i = 0; i < n; i++) a[i] = 1.0f;
        const int reps = (int)((size_t)256 << 20) / (n * 4 * nt) + 1;
        for (int pass = 0; pass < 3; ++pass) {
          __m512 s[8];
          for (int j = 0; j < 8; ++j) s[j] = _mm512_setzero_ps();
#pragma omp barrier
          const double t0 = omp_get_wtime();
          for (int r = 0; r < reps; r++)
            for (size_t i = 0; i < n; i += 128)
              for (int j = 0; j < 8; ++j) s[j] = _mm512_add_ps(s[j], _mm512_load_ps(a + i + 16 * j));
#pragma omp barrier
          const double t = omp_get_wtime() - t0;
#pragma omp master
          {
            const double gbs = (double)reps * n * 4 * nt / t / 1e9;
            if (gbs > best) best = gbs;
          }
          for (int j = 0; j < 8; ++j) sink += _mm512_reduce_add_ps(s[j]);
        }
        free(a);
      }
      printf("%7d  %9zu  %6.1f%s\n", nt, kib, best, sink == 0 ? "?" : "");
    }
  return 0;
}
