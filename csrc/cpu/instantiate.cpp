// The one dispatch point from a runtime cell kind to the templated driver, and the explicit
// instantiations for float and double.
#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "cpu/driver.h"
#include "fusedrnn/check.h"

namespace fusedrnn {

int cell_gates(CellKind kind) {
  switch (kind) {
    case CellKind::RnnTanh: return RnnTanhCell::kGates;
    case CellKind::RnnRelu: return RnnReluCell::kGates;
    case CellKind::Lstm: return LstmCell::kGates;
    case CellKind::Gru: return GruCell::kGates;
    case CellKind::GruV1: return GruV1Cell::kGates;
  }
  throw std::invalid_argument("unknown cell kind");
}

int cell_saved(CellKind kind) {
  switch (kind) {
    case CellKind::RnnTanh: return RnnTanhCell::kSaved;
    case CellKind::RnnRelu: return RnnReluCell::kSaved;
    case CellKind::Lstm: return LstmCell::kSaved;
    case CellKind::Gru: return GruCell::kSaved;
    case CellKind::GruV1: return GruV1Cell::kSaved;
  }
  throw std::invalid_argument("unknown cell kind");
}

// GruV1's bulk dW_hh reads r h as saved value 3.
static_assert(GruV1Cell::kSaved == 4, "GruV1Cell saves [r, z, n, r h]");

template <class T>
void layer_forward(CellKind kind, const ForwardParams<T>& p) {
  switch (kind) {
    case CellKind::RnnTanh: return cpu::forward<RnnTanhCell>(p);
    case CellKind::RnnRelu: return cpu::forward<RnnReluCell>(p);
    case CellKind::Lstm: return cpu::forward<LstmCell>(p);
    case CellKind::Gru: return cpu::forward<GruCell>(p);
    case CellKind::GruV1: return cpu::forward<GruV1Cell>(p);
  }
  throw std::invalid_argument("unknown cell kind");
}

template <class T>
void layer_backward(CellKind kind, const BackwardParams<T>& p) {
  switch (kind) {
    case CellKind::RnnTanh: return cpu::backward<RnnTanhCell>(p);
    case CellKind::RnnRelu: return cpu::backward<RnnReluCell>(p);
    case CellKind::Lstm: return cpu::backward<LstmCell>(p);
    case CellKind::Gru: return cpu::backward<GruCell>(p);
    case CellKind::GruV1: return cpu::backward<GruV1Cell>(p);
  }
  throw std::invalid_argument("unknown cell kind");
}

template void layer_forward<float>(CellKind, const ForwardParams<float>&);
template void layer_forward<double>(CellKind, const ForwardParams<double>&);
template void layer_backward<float>(CellKind, const BackwardParams<float>&);
template void layer_backward<double>(CellKind, const BackwardParams<double>&);

}  // namespace fusedrnn
