#pragma once
// Throwing checks. std::invalid_argument becomes ValueError in Python, fusedrnn::TypeError
// becomes TypeError (registered in the bindings).
#include <sstream>
#include <stdexcept>
#include <string>

namespace fusedrnn {

struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class A, class... Rest>
void append(std::ostringstream& os, const A& a, const Rest&... rest) {
  os << a;
  append(os, rest...);
}
}  // namespace detail

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  return os.str();
}

}  // namespace fusedrnn

#define FUSEDRNN_CHECK(cond, ...)                                        \
  do {                                                                   \
    if (!(cond)) throw std::invalid_argument(::fusedrnn::concat(__VA_ARGS__)); \
  } while (0)

#define FUSEDRNN_CHECK_TYPE(cond, ...)                                   \
  do {                                                                   \
    if (!(cond)) throw ::fusedrnn::TypeError(::fusedrnn::concat(__VA_ARGS__)); \
  } while (0)
