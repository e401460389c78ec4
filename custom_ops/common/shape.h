// Shape formatting for error messages, shared by the op definitions (plain C++, no onnxruntime
// or CUDA header): "[2, 3, 4]".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace n6 {

inline std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace n6
