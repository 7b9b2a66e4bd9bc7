// Bilinear sampling geometry shared by the CPU and CUDA kernels.
//
// Convention (the one of F.grid_sample with align_corners=False and zero padding): a normalised
// coordinate u in [0, 1] maps to the pixel coordinate u * size - 0.5, so pixel centres sit at
// (i + 0.5) / size. Corners outside the map read zero and receive no gradient.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define UNIOVSEG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UNIOVSEG_HOST_DEVICE inline
#endif

namespace uniovseg {

template <typename scalar_t>
UNIOVSEG_HOST_DEVICE scalar_t floor_value(scalar_t v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// The four neighbours of a sampling point: corner k = 2 * dy + dx for offsets (dx, dy) from the
// top-left neighbour (x0, y0). index[k] is the key index inside the level (y * W + x), or -1 when
// the corner lies outside the map.
template <typename scalar_t>
struct BilinearCorners {
  int64_t index[4];
  scalar_t fx;  // x - x0, weight of the right column
  scalar_t fy;  // y - y0, weight of the bottom row
};

// Returns false when no corner of the point lies inside the map (or the point is NaN): the
// sample is then zero and has zero gradient.
template <typename scalar_t>
UNIOVSEG_HOST_DEVICE bool bilinear_corners(scalar_t loc_x, scalar_t loc_y, int64_t height,
                                           int64_t width, BilinearCorners<scalar_t>& c) {
  const scalar_t x = loc_x * static_cast<scalar_t>(width) - scalar_t(0.5);
  const scalar_t y = loc_y * static_cast<scalar_t>(height) - scalar_t(0.5);
  // Written so that NaN fails the test; x == -1 keeps its (zero-weight) right neighbour so the
  // gradient matches grid_sample's at that point.
  if (!(x >= scalar_t(-1) && x < static_cast<scalar_t>(width) && y >= scalar_t(-1) &&
        y < static_cast<scalar_t>(height))) {
    return false;
  }
  const scalar_t xf = floor_value(x);
  const scalar_t yf = floor_value(y);
  const int64_t x0 = static_cast<int64_t>(xf);
  const int64_t y0 = static_cast<int64_t>(yf);
  c.fx = x - xf;
  c.fy = y - yf;
  const bool x0_in = x0 >= 0;
  const bool x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y0 + 1 < height;
  c.index[0] = (y0_in && x0_in) ? y0 * width + x0 : -1;
  c.index[1] = (y0_in && x1_in) ? y0 * width + x0 + 1 : -1;
  c.index[2] = (y1_in && x0_in) ? (y0 + 1) * width + x0 : -1;
  c.index[3] = (y1_in && x1_in) ? (y0 + 1) * width + x0 + 1 : -1;
  return true;
}

}  // namespace uniovseg
