#pragma once
// Content stamps of device arrays: a training forward stamps what backward will read besides
// the reserve (x, h0, c0, the parameters), backward stamps them again and compares, so an
// in-place change in between raises instead of mixing the forward's activations with new
// values (the device twin of fusedrnn::content_stamps, api.h; a different hash, computed
// where the arrays live). Each array is cut into chunks of kChunkWords 32-bit words (every
// array here has 4- or 8-byte elements, so 4-byte reads are aligned); one element hashes one
// chunk, a second launch folds each array's chunk hashes in order. Not cryptographic: it
// catches modifications. Generic over the executor (layer.h), so the host executor tests it.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fusedrnn/common.h"

namespace fusedrnn {
namespace device {

constexpr int kStampMaxArrays = 32;  // arrays per launch (the functor is a kernel argument)
constexpr int64_t kStampChunkWords = 512;

FUSEDRNN_HOST_DEVICE uint64_t stamp_mix64(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 31);
}

// The arrays of one launch and where each one's chunks start in the chunk list.
struct StampBatch {
  const uint32_t* data[kStampMaxArrays];
  int64_t words[kStampMaxArrays];
  int64_t first_chunk[kStampMaxArrays + 1];
  int count;
};

// Element c: the hash of chunk c (Fletcher-style sums of its words, mixed).
struct StampChunks {
  StampBatch batch;
  uint64_t* chunk_hash;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t c) const {
    int k = 0;
    while (k + 1 < batch.count && c >= batch.first_chunk[k + 1]) ++k;
    const int64_t w0 = (c - batch.first_chunk[k]) * kStampChunkWords;
    const int64_t n = batch.words[k] - w0 < kStampChunkWords ? batch.words[k] - w0
                                                             : kStampChunkWords;
    const uint32_t* p = batch.data[k] + w0;
    uint64_t s1 = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      s1 += p[i];
      s2 += s1;
    }
    chunk_hash[c] = stamp_mix64(stamp_mix64(stamp_mix64(0x243F6A8885A308D3ull, uint64_t(n)), s1),
                                s2);
  }
};

// Element k: array k's stamp, its chunk hashes folded in order with its size.
struct StampFold {
  StampBatch batch;
  const uint64_t* chunk_hash;
  uint64_t* out;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t k) const {
    uint64_t h = stamp_mix64(0x13198A2E03707344ull, uint64_t(batch.words[k]));
    for (int64_t c = batch.first_chunk[k]; c < batch.first_chunk[k + 1]; ++c)
      h = stamp_mix64(h, chunk_hash[c]);
    out[k] = h;
  }
};

// One element: the index of the first stamp that differs, or -1.
struct StampFirstDifference {
  const uint64_t* a;
  const uint64_t* b;
  int64_t n;
  int64_t* first;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t) const {
    int64_t f = -1;
    for (int64_t k = 0; k < n && f < 0; ++k)
      if (a[k] != b[k]) f = k;
    *first = f;
  }
};

// out[k] (device memory) = the stamp of the bytes[k] bytes at data[k], k < n.
template <class Exec>
void device_stamps(Exec& ex, size_t n, const void* const* data, const size_t* bytes,
                   uint64_t* out) {
  for (size_t k0 = 0; k0 < n; k0 += kStampMaxArrays) {
    StampBatch b{};
    b.count = int(n - k0 < size_t(kStampMaxArrays) ? n - k0 : size_t(kStampMaxArrays));
    b.first_chunk[0] = 0;
    for (int k = 0; k < b.count; ++k) {
      b.data[k] = static_cast<const uint32_t*>(data[k0 + k]);
      b.words[k] = int64_t(bytes[k0 + k] / 4);
      b.first_chunk[k + 1] =
          b.first_chunk[k] + (b.words[k] + kStampChunkWords - 1) / kStampChunkWords;
    }
    const int64_t chunks = b.first_chunk[b.count];
    auto hashes = ex.template buffer<uint64_t>(chunks);
    ex.launch("stamp chunks", chunks, StampChunks{b, hashes.get()});
    ex.launch("stamp fold", b.count, StampFold{b, hashes.get(), out + k0});
  }
}

// The index of the first array whose stamp differs from stamps[k] (device memory), or -1.
// Reads one integer back to the host: waits for the executor's stream.
template <class Exec>
int64_t first_changed_stamp(Exec& ex, size_t n, const void* const* data, const size_t* bytes,
                            const uint64_t* stamps) {
  if (n == 0) return -1;
  auto now = ex.template buffer<uint64_t>(int64_t(n));
  device_stamps(ex, n, data, bytes, now.get());
  auto first = ex.template buffer<int64_t>(1);
  ex.launch("stamp compare", 1, StampFirstDifference{stamps, now.get(), int64_t(n), first.get()});
  int64_t host = -1;
  ex.to_host(&host, first.get(), sizeof host);
  return host;
}

}  // namespace device
}  // namespace fusedrnn
