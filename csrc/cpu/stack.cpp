// Whole stacks: layers x directions x time in one native call (DESIGN.md §2 "Layers").
// Layer l > 0 reads the previous layer's (T, B, D*R) output; the directions of one layer write
// interleaved column blocks of it; dropout (training) multiplies every layer's output but the
// last by keep/(1-p). Built on the single-layer driver.
#include <omp.h>

#include <cstring>

#include "core/registry.h"
#include "fusedrnn/api.h"
#include "fusedrnn/check.h"

namespace fusedrnn {

namespace {

template <class T>
struct Buffer {
  std::unique_ptr<T[]> data;
  int64_t size = 0;
  void resize(int64_t n) {  // uninitialised: every element is written before it is read
    data.reset(new T[n > 0 ? n : 1]);
    size = n;
  }
  T* get() const { return data.get(); }
};

// (A, B', C) <-> (B', A, C) copy: batch-first <-> time-major.
template <class T>
void swap_leading_axes(const T* src, T* dst, int64_t a, int64_t b, int64_t c) {
  const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (a * b * c >= (1 << 16))
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j) std::memcpy(dst + (j * a + i) * c, src + (i * b + j) * c, sizeof(T) * c);
}

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// keep[i] = U(seed, layer, i) >= p, counter-based: independent of thread count and order.
void dropout_mask(uint8_t* keep, int64_t n, double p, uint64_t seed, int64_t layer) {
  const uint64_t base = splitmix64(seed ^ splitmix64(0xD1B54A32D192ED03ull + uint64_t(layer)));
  const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const double u = double(splitmix64(base + uint64_t(i)) >> 11) * 0x1.0p-53;
    keep[i] = u >= p;
  }
}

// a *= keep / (1 - p): a multiplication, as torch and the reference do, so a dropped NaN or
// inf stays NaN (0 * inf) rather than becoming a silent 0.
template <class T>
void apply_mask(T* a, const uint8_t* keep, int64_t n, double p) {
  const T scale = T(1.0 / (1.0 - p));
  const int nt = get_num_threads();
#pragma omp parallel for num_threads(nt) if (n >= (1 << 16))
  for (int64_t i = 0; i < n; ++i) a[i] *= keep[i] ? scale : T(0);
}

// The shape, weights and input of layer l, direction d (d == 1 runs in reverse).
template <class T>
void set_layer(LayerShape<T>& p, const StackConfig& cfg, int64_t l, int64_t d,
               const StackWeights<T>& w, const T* x, const int64_t* lengths) {
  p.steps = cfg.steps;
  p.batch = cfg.batch;
  p.input = cfg.layer_input(l);
  p.hidden = cfg.hidden;
  p.proj = cfg.proj;
  p.x = x;
  p.w_ih = w.w_ih;
  p.w_hh = w.w_hh;
  p.b_ih = w.b_ih;
  p.b_hh = w.b_hh;
  p.w_hr = w.w_hr;
  p.lengths = lengths;
  p.reverse = d == 1;
}

}  // namespace

template <class T>
struct StackState {
  StackConfig cfg;
  std::vector<int64_t> lengths;         // empty: all T
  const T* x0 = nullptr;                 // layer-0 input, time-major (x itself, or x_tb)
  Buffer<T> x_tb;                        // time-major copy of a batch-first x
  std::vector<Buffer<T>> layer_in;       // l >= 1: the input of layer l (dropped output of l-1)
  std::vector<Buffer<uint8_t>> keep;     // l < L-1: dropout keep-mask after layer l
  std::vector<Buffer<T>> saved, h_prev, proj_in;  // per layer and direction
  const T* input(int64_t l) const { return l == 0 ? x0 : layer_in[l].get(); }
};

template <class T>
void StackStateDeleter<T>::operator()(StackState<T>* s) const {
  delete s;
}

namespace {

template <class T>
StackStatePtr<T> stack_forward_impl(const StackConfig& cfg, const std::vector<StackWeights<T>>& w,
                                    const int64_t* lengths, const T* x, const T* h0, const T* c0,
                                    T* y, T* h_n, T* c_n, bool training) {
  const int64_t Tn = cfg.steps, B = cfg.batch, H = cfg.hidden, R = cfg.recurrent();
  const int64_t L = cfg.layers, D = cfg.dirs, DR = D * R;
  const int64_t S = cell_info(cfg.kind).saved;
  const bool dropout = training && cfg.dropout > 0 && L > 1;

  StackStatePtr<T> st(new StackState<T>());
  st->cfg = cfg;
  if (lengths) st->lengths.assign(lengths, lengths + B);
  const int64_t* lens = lengths ? st->lengths.data() : nullptr;

  // Layer-0 input, time-major. Without batch_first the state points at x itself: the caller
  // keeps x alive and unchanged until backward (the bindings hold a reference).
  const T* in = x;
  if (cfg.batch_first) {
    st->x_tb.resize(Tn * B * cfg.input);
    swap_leading_axes(x, st->x_tb.get(), B, Tn, cfg.input);
    in = st->x_tb.get();
  }
  st->x0 = in;
  // Outputs of layers: training keeps each (as the next layer's input); inference ping-pongs.
  Buffer<T> ping[2];
  Buffer<T> y_tb;
  T* y_last = y;
  if (cfg.batch_first) {
    y_tb.resize(Tn * B * DR);
    y_last = y_tb.get();
  }
  if (training) {
    st->layer_in.resize(L);
    st->keep.resize(L);
    st->saved.resize(L * D);
    st->h_prev.resize(L * D);
    st->proj_in.resize(L * D);
  }

  for (int64_t l = 0; l < L; ++l) {
    T* out;
    if (l == L - 1) {
      out = y_last;
    } else if (training) {
      st->layer_in[l + 1].resize(Tn * B * DR);
      out = st->layer_in[l + 1].get();
    } else {
      ping[l % 2].resize(Tn * B * DR);
      out = ping[l % 2].get();
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      ForwardParams<T> p;
      set_layer(p, cfg, l, d, w[k], in, lens);
      p.h0 = h0 ? h0 + k * B * R : nullptr;
      p.c0 = c0 ? c0 + k * B * H : nullptr;
      p.y = out + d * R;
      p.ld_y = DR;
      p.h_n = h_n + k * B * R;
      p.c_n = c_n ? c_n + k * B * H : nullptr;
      if (training) {
        st->saved[k].resize(Tn * B * S * H);
        st->h_prev[k].resize(Tn * B * R);
        p.saved = st->saved[k].get();
        p.h_prev = st->h_prev[k].get();
        if (cfg.proj > 0) {
          st->proj_in[k].resize(Tn * B * H);
          p.proj_in = st->proj_in[k].get();
        }
      }
      layer_forward<T>(cfg.kind, p);
    }
    if (dropout && l < L - 1) {
      st->keep[l].resize(Tn * B * DR);
      dropout_mask(st->keep[l].get(), Tn * B * DR, cfg.dropout, cfg.seed, l);
      apply_mask(out, st->keep[l].get(), Tn * B * DR, cfg.dropout);
    }
    in = out;
  }
  if (cfg.batch_first) swap_leading_axes(y_tb.get(), y, Tn, B, DR);
  if (!training) st.reset();
  return st;
}

template <class T>
void stack_backward_impl(const StackState<T>& st, const std::vector<StackWeights<T>>& w,
                         const T* dy, const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                         const std::vector<StackGrads<T>>& g, bool accumulate) {
  const StackConfig& cfg = st.cfg;
  const int64_t Tn = cfg.steps, B = cfg.batch, H = cfg.hidden, R = cfg.recurrent();
  const int64_t L = cfg.layers, D = cfg.dirs, DR = D * R;
  const bool dropout = cfg.dropout > 0 && L > 1;
  const int64_t* lens = st.lengths.empty() ? nullptr : st.lengths.data();

  Buffer<T> dy_tb, dx_tb, d_in[2];
  const T* dcur = dy;
  if (cfg.batch_first && dy) {
    dy_tb.resize(Tn * B * DR);
    swap_leading_axes(dy, dy_tb.get(), B, Tn, DR);
    dcur = dy_tb.get();
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    T* dlayer_in;
    if (l == 0) {
      if (cfg.batch_first) {
        dx_tb.resize(Tn * B * cfg.input);
        dlayer_in = dx_tb.get();
      } else {
        dlayer_in = dx;
      }
    } else {
      d_in[l % 2].resize(Tn * B * DR);
      dlayer_in = d_in[l % 2].get();
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      BackwardParams<T> p;
      set_layer(p, cfg, l, d, w[k], st.input(l), lens);
      p.saved = st.saved[k].get();
      p.h_prev = st.h_prev[k].get();
      p.proj_in = cfg.proj > 0 ? st.proj_in[k].get() : nullptr;
      p.dy = dcur ? dcur + d * R : nullptr;
      p.ld_dy = DR;
      p.dh_n = dh_n ? dh_n + k * B * R : nullptr;
      p.dc_n = dc_n ? dc_n + k * B * H : nullptr;
      p.dx = dlayer_in;
      p.dh0 = dh0 + k * B * R;
      p.dc0 = dc0 ? dc0 + k * B * H : nullptr;
      p.dw_ih = g[k].w_ih;
      p.dw_hh = g[k].w_hh;
      p.db_ih = g[k].b_ih;
      p.db_hh = g[k].b_hh;
      p.dw_hr = g[k].w_hr;
      p.accumulate_dx = d > 0;
      p.accumulate_grads = accumulate;
      layer_backward<T>(cfg.kind, p);
    }
    if (l > 0 && dropout) apply_mask(dlayer_in, st.keep[l - 1].get(), Tn * B * DR, cfg.dropout);
    dcur = dlayer_in;
  }
  if (cfg.batch_first) swap_leading_axes(dx_tb.get(), dx, Tn, B, cfg.input);
}

}  // namespace

template <class T>
StackStatePtr<T> stack_forward(const StackConfig& cfg, const std::vector<StackWeights<T>>& w,
                               const int64_t* lengths, const T* x, const T* h0, const T* c0,
                               T* y, T* h_n, T* c_n, bool training) {
  StackStatePtr<T> st;
  run_parallel_work([&] {
    st = stack_forward_impl<T>(cfg, w, lengths, x, h0, c0, y, h_n, c_n, training);
  });
  return st;
}

template <class T>
void stack_backward(const StackState<T>& st, const std::vector<StackWeights<T>>& w,
                    const T* dy, const T* dh_n, const T* dc_n, T* dx, T* dh0, T* dc0,
                    const std::vector<StackGrads<T>>& g, bool accumulate) {
  run_parallel_work([&] { stack_backward_impl<T>(st, w, dy, dh_n, dc_n, dx, dh0, dc0, g, accumulate); });
}

template <class T>
const uint8_t* stack_keep_mask(const StackState<T>& st, int64_t l) {
  if (l < 0 || l >= (int64_t)st.keep.size() || !st.keep[l].data) return nullptr;  // no dropout
  return st.keep[l].get();
}

#define FUSEDRNN_INSTANTIATE_STACK(T)                                                          \
  template struct StackStateDeleter<T>;                                                        \
  template StackStatePtr<T> stack_forward<T>(const StackConfig&,                               \
                                             const std::vector<StackWeights<T>>&,              \
                                             const int64_t*, const T*, const T*, const T*, T*, \
                                             T*, T*, bool);                                    \
  template void stack_backward<T>(const StackState<T>&, const std::vector<StackWeights<T>>&,   \
                                  const T*, const T*, const T*, T*, T*, T*,                    \
                                  const std::vector<StackGrads<T>>&, bool);                    \
  template const uint8_t* stack_keep_mask<T>(const StackState<T>&, int64_t);

FUSEDRNN_INSTANTIATE_STACK(float)
FUSEDRNN_INSTANTIATE_STACK(double)

}  // namespace fusedrnn
