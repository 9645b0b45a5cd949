#pragma once
// 16-bit storage on the device backend (bfloat16, float16; fusedrnn/half.h): the caller's
// arrays stay 16-bit, the layers compute in float32. Every 16-bit input (x, states, weights,
// biases, dy, ...) is widened into float32 scratch in one launch, the float32 stack loop runs
// (step loop or persistent loop, fp32 accumulation, fp32 cell and hidden state, an fp32
// training state in the reserve: stack_state_layout sizes 16-bit calls in float32), and the
// outputs are narrowed (round to nearest even) in one more launch. So each output is rounded
// once, where cuDNN's 16-bit path also rounds h between steps; the reference's low-precision
// run (fusedrnn.reference.quantize) models exactly this.
//
// Not done: keeping W_hh on-chip in 16 bits (which would double the H the persistent loop
// holds); the widened weights are recomputed on every call (no weight cache).
#include <cstdint>
#include <utility>
#include <vector>

#include "core/stack_loop.h"
#include "device/layer.h"
#include "fusedrnn/half.h"
#include "fusedrnn/stack.h"

namespace fusedrnn {
namespace device {

// Up to 12 (16-bit array, float32 array) pairs converted in one launch (kernels.h Segments).
template <class S>
struct Conversions {
  struct Pair {
    const S* narrow_src;  // widen: read
    S* narrow_dst;        // narrow: written
    float* wide;
    int64_t n;
    bool accumulate;  // narrow: dst = narrow(widen(dst) + wide)
  };
  Pair pairs[12];
  Segments<12> seg;

  FUSEDRNN_HOST_DEVICE const Pair& find(int64_t& i) const { return pairs[seg.find(i)]; }
};

template <class S>
struct WidenMany {
  Conversions<S> c;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    const auto& p = c.find(i);
    p.wide[i] = widen(p.narrow_src[i]);
  }
};

template <class S>
struct NarrowMany {
  Conversions<S> c;
  FUSEDRNN_HOST_DEVICE void operator()(int64_t i) const {
    const auto& p = c.find(i);
    const float v = p.accumulate ? widen(p.narrow_dst[i]) + p.wide[i] : p.wide[i];
    p.narrow_dst[i] = narrow<S>(v);
  }
};

// Collects conversions and launches them 12 at a time; owns the float32 buffers.
template <class S, class Exec>
class Converter {
 public:
  explicit Converter(Exec& ex) : ex_(ex) {}

  // A float32 copy of n elements of src (null: null).
  const float* widened(const S* src, int64_t n) {
    if (!src) return nullptr;
    float* w = fresh(n);
    if (n > 0) widen_.push_back({src, nullptr, w, n, false});
    return w;
  }
  // A float32 buffer whose contents narrow_all() rounds into dst (null: null).
  float* narrowed(S* dst, int64_t n, bool accumulate = false) {
    if (!dst) return nullptr;
    float* w = fresh(n);
    if (n > 0) narrow_.push_back({nullptr, dst, w, n, accumulate});
    return w;
  }
  void widen_all() { flush<WidenMany<S>>(widen_, "widen 16-bit"); }
  void narrow_all() { flush<NarrowMany<S>>(narrow_, "narrow to 16-bit"); }

 private:
  using Pair = typename Conversions<S>::Pair;
  float* fresh(int64_t n) {
    buffers_.push_back(ex_.template buffer<float>(n));
    return buffers_.back().get();
  }
  template <class F>
  void flush(std::vector<Pair>& list, const char* name) {
    F f{};
    for (size_t k = 0; k < list.size(); ++k) {
      f.c.pairs[f.c.seg.count] = list[k];
      f.c.seg.add(list[k].n);
      if (f.c.seg.full() || k + 1 == list.size()) {
        ex_.launch(name, f.c.seg.total, f);
        f.c.seg = {};
      }
    }
    list.clear();
  }
  Exec& ex_;
  std::vector<decltype(std::declval<Exec&>().template buffer<float>(0))> buffers_;  // owned
  std::vector<Pair> widen_, narrow_;
};

// The element counts of one layer and direction's weights (fusedrnn/stack.h StackWeights).
struct WeightSizes {
  int64_t w_ih, w_hh, bias, w_hr;
  WeightSizes(const StackConfig& cfg, int64_t layer) {
    const int64_t GH = int64_t(cell_info(cfg.kind).gates) * cfg.hidden;
    w_ih = GH * cfg.layer_input(layer);
    w_hh = GH * cfg.recurrent();
    bias = GH;
    w_hr = cfg.proj * cfg.hidden;
  }
};

template <class S, class Exec>
std::vector<StackWeights<float>> widened_weights(Converter<S, Exec>& cv, const StackConfig& cfg,
                                                 const StackWeights<S>* w) {
  std::vector<StackWeights<float>> out(size_t(cfg.layers * cfg.dirs));
  for (int64_t k = 0; k < cfg.layers * cfg.dirs; ++k) {
    const WeightSizes n(cfg, k / cfg.dirs);
    out[size_t(k)] = {cv.widened(w[k].w_ih, n.w_ih), cv.widened(w[k].w_hh, n.w_hh),
                      cv.widened(w[k].b_ih, n.bias), cv.widened(w[k].b_hh, n.bias),
                      cv.widened(w[k].w_hr, n.w_hr)};
  }
  return out;
}

// fusedrnn/stack.h's stack_forward for 16-bit storage S on a device backend.
template <class S, class Exec>
void widened_stack_forward(DeviceBackend<Exec>& be, const StackConfig& cfg, const StackWeights<S>* w,
                           const int64_t* lengths, const S* x, const S* h0, const S* c0, S* y,
                           S* h_n, S* c_n, void* reserve) {
  Converter<S, Exec> cv(be.ex);
  const int64_t TB = cfg.steps * cfg.batch, LDB = cfg.layers * cfg.dirs * cfg.batch;
  const int64_t R = cfg.recurrent(), H = cfg.hidden;
  const auto wf = widened_weights(cv, cfg, w);
  const float* xf = cv.widened(x, TB * cfg.input);
  const float* h0f = cv.widened(h0, LDB * R);
  const float* c0f = cv.widened(c0, LDB * H);
  cv.widen_all();
  float* yf = cv.narrowed(y, TB * cfg.dirs * R);
  float* h_nf = cv.narrowed(h_n, LDB * R);
  float* c_nf = cv.narrowed(c_n, LDB * H);
  core::stack_forward_loop<float>(be, cfg, wf.data(), lengths, xf, h0f, c0f, yf, h_nf, c_nf,
                                  reserve);
  cv.narrow_all();
}

// fusedrnn/stack.h's stack_backward for 16-bit storage S; accumulate adds to the 16-bit
// gradients in float32 and rounds the sum once.
template <class S, class Exec>
void widened_stack_backward(DeviceBackend<Exec>& be, const StackConfig& cfg, const StackWeights<S>* w,
                            const int64_t* lengths, const S* x, const void* reserve, const S* dy,
                            const S* dh_n, const S* dc_n, S* dx, S* dh0, S* dc0,
                            const StackGrads<S>* g, bool accumulate) {
  Converter<S, Exec> cv(be.ex);
  const int64_t TB = cfg.steps * cfg.batch, LDB = cfg.layers * cfg.dirs * cfg.batch;
  const int64_t R = cfg.recurrent(), H = cfg.hidden;
  const auto wf = widened_weights(cv, cfg, w);
  const float* xf = cv.widened(x, TB * cfg.input);
  const float* dyf = cv.widened(dy, TB * cfg.dirs * R);
  const float* dh_nf = cv.widened(dh_n, LDB * R);
  const float* dc_nf = cv.widened(dc_n, LDB * H);
  cv.widen_all();
  float* dxf = cv.narrowed(dx, TB * cfg.input);
  float* dh0f = cv.narrowed(dh0, LDB * R);
  float* dc0f = cv.narrowed(dc0, LDB * H);
  std::vector<StackGrads<float>> gf(size_t(cfg.layers * cfg.dirs));
  for (int64_t k = 0; k < cfg.layers * cfg.dirs; ++k) {
    const WeightSizes n(cfg, k / cfg.dirs);
    gf[size_t(k)] = {cv.narrowed(g[k].w_ih, n.w_ih, accumulate),
                     cv.narrowed(g[k].w_hh, n.w_hh, accumulate),
                     cv.narrowed(g[k].b_ih, n.bias, accumulate),
                     cv.narrowed(g[k].b_hh, n.bias, accumulate),
                     cv.narrowed(g[k].w_hr, n.w_hr, accumulate)};
  }
  core::stack_backward_loop<float>(be, cfg, wf.data(), lengths, xf, reserve, dyf, dh_nf, dc_nf,
                                   dxf, dh0f, dc0f, gf.data(), /*accumulate=*/false);
  cv.narrow_all();
}

// The device backend's stack entry points for every storage type: the stack loop itself for
// float32/float64, through the float32 conversions above for the 16-bit types.
template <class T, class Exec>
void device_stack_forward(DeviceBackend<Exec>& be, const StackConfig& cfg,
                          const StackWeights<T>* w, const int64_t* lengths, const T* x,
                          const T* h0, const T* c0, T* y, T* h_n, T* c_n, void* reserve) {
  if constexpr (is_16bit_storage_v<T>)
    widened_stack_forward<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n, reserve);
  else
    core::stack_forward_loop<T>(be, cfg, w, lengths, x, h0, c0, y, h_n, c_n, reserve);
}

template <class T, class Exec>
void device_stack_backward(DeviceBackend<Exec>& be, const StackConfig& cfg,
                           const StackWeights<T>* w, const int64_t* lengths, const T* x,
                           const void* reserve, const T* dy, const T* dh_n, const T* dc_n, T* dx,
                           T* dh0, T* dc0, const StackGrads<T>* g, bool accumulate) {
  if constexpr (is_16bit_storage_v<T>)
    widened_stack_backward<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n, dx, dh0, dc0, g,
                              accumulate);
  else
    core::stack_backward_loop<T>(be, cfg, w, lengths, x, reserve, dy, dh_n, dc_n, dx, dh0, dc0,
                                 g, accumulate);
}

}  // namespace device
}  // namespace fusedrnn
