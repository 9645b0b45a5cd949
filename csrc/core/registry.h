#pragma once
// The cell registry: the one place a runtime CellKind becomes a cell type (csrc/cells/*.h).
// Every backend dispatches through visit_cell; sizes come from the cell structs themselves, so
// a gate or saved count is written once, in its cell header.
#include <stdexcept>

#include "cells/gru.h"
#include "cells/lstm.h"
#include "cells/rnn.h"
#include "fusedrnn/params.h"

namespace fusedrnn {
FUSEDRNN_ISA_BEGIN

// Calls f(Cell{}) with the cell type of `kind` and returns its result.
template <class F>
decltype(auto) visit_cell(CellKind kind, F&& f) {
  switch (kind) {
    case CellKind::RnnTanh: return f(RnnTanhCell{});
    case CellKind::RnnRelu: return f(RnnReluCell{});
    case CellKind::Lstm: return f(LstmCell{});
    case CellKind::Gru: return f(GruCell{});
    case CellKind::GruV1: return f(GruV1Cell{});
  }
  throw std::invalid_argument("unknown cell kind");
}

// What the boundary and the stack loop need to know about a cell, without its math. (Inside
// the per-ISA namespace like visit_cell, so no inline function differs between copies.)
struct CellInfo {
  const char* name;  // as fusedrnn.functional names the mode ("gru_v1": reset_after=False)
  int gates;         // G: gate blocks of W_ih/W_hh rows
  int saved;         // S: values saved per hidden unit by a training forward
  bool cell_state;   // carries c (LSTM)
};

inline CellInfo cell_info(CellKind kind) {
  return visit_cell(kind, [&](auto cell) {
    using Cell = decltype(cell);
    const char* names[] = {"rnn_tanh", "rnn_relu", "lstm", "gru", "gru_v1"};
    return CellInfo{names[int(kind)], Cell::kGates, Cell::kSaved, Cell::kHasCellState};
  });
}

inline bool valid_cell_kind(int kind) { return kind >= 0 && kind <= int(CellKind::GruV1); }

FUSEDRNN_ISA_END

}  // namespace fusedrnn
