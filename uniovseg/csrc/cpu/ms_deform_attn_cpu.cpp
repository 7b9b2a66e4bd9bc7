// CPU kernels of multi-scale deformable attention, forward and backward.
//
// Forward: parallel over (batch, query); each task writes its own output rows, so no
// synchronisation is needed. The head_dim loop is the innermost one: a key's D channels are
// contiguous in value ([B, S, heads, D]), so the four bilinear corners are four contiguous rows.
//
// Backward: the gradient of value is a scatter (many queries hit the same key). It is made
// atomic-free by giving each task one (batch, head) pair, whose value-gradient slice
// grad_value[b, :, h, :] no other task touches. When there are fewer (batch, head) pairs than
// threads, the queries of a pair are also split into chunks; chunk 0 writes into grad_value and
// the other chunks into private zero-initialised buffers that are summed afterwards.
// Gradients of sampling locations and attention weights are per (b, q, h) and written once.
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace uniovseg {
namespace {

struct Level {
  int64_t height;
  int64_t width;
  int64_t start;
};

struct Sizes {
  int64_t batch;
  int64_t num_keys;
  int64_t heads;
  int64_t dim;
  int64_t num_queries;
  int64_t levels;
  int64_t points;
};

Sizes read_sizes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{value.size(0),
               value.size(1),
               value.size(2),
               value.size(3),
               sampling_locations.size(1),
               sampling_locations.size(3),
               sampling_locations.size(4)};
}

// Copies the level table to a vector and checks that every level lies inside value.
std::vector<Level> read_levels(const at::Tensor& spatial_shapes,
                               const at::Tensor& level_start_index, int64_t num_keys) {
  const auto shapes = spatial_shapes.accessor<int64_t, 2>();
  const auto starts = level_start_index.accessor<int64_t, 1>();
  std::vector<Level> levels(spatial_shapes.size(0));
  for (int64_t l = 0; l < spatial_shapes.size(0); ++l) {
    levels[l] = Level{shapes[l][0], shapes[l][1], starts[l]};
    TORCH_CHECK(levels[l].height > 0 && levels[l].width > 0, "ms_deform_attn: level ", l,
                " has non-positive size (", levels[l].height, ", ", levels[l].width, ")");
    TORCH_CHECK(levels[l].start >= 0 && levels[l].start + levels[l].height * levels[l].width <=
                                            num_keys,
                "ms_deform_attn: level ", l, " (start ", levels[l].start, ", size ",
                levels[l].height, "x", levels[l].width, ") does not fit in value with ", num_keys,
                " keys; check spatial_shapes and level_start_index");
  }
  return levels;
}

// out[d] += sum_k w_k * v_k[d]. Invalid corners point at a zero row with weight 0, so the loop
// has no branch and vectorises.
template <typename T>
inline void accumulate_corners(T* __restrict__ out, const T* __restrict__ v0,
                               const T* __restrict__ v1, const T* __restrict__ v2,
                               const T* __restrict__ v3, T w0, T w1, T w2, T w3, int64_t dim) {
  for (int64_t d = 0; d < dim; ++d) {
    out[d] += w0 * v0[d] + w1 * v1[d] + w2 * v2[d] + w3 * v3[d];
  }
}

// Dot products of one sample with the output gradient, and the scatter into the value gradient.
struct SampleGrad {
  double dot_value;  // sum_d g[d] * bilinear(v)[d]        -> attention weight gradient
  double dot_dx;     // sum_d g[d] * d bilinear(v)[d] / dx  -> location gradient (pixels)
  double dot_dy;
};

// The reductions use kLanes independent partial sums so the compiler can vectorise them without
// reassociating floating-point additions (no -ffast-math needed).
template <typename T>
inline SampleGrad sample_backward(const T* __restrict__ grad, const T* __restrict__ v0,
                                  const T* __restrict__ v1, const T* __restrict__ v2,
                                  const T* __restrict__ v3, T* __restrict__ g0,
                                  T* __restrict__ g1, T* __restrict__ g2, T* __restrict__ g3,
                                  T fx, T fy, T w0, T w1, T w2, T w3, int64_t dim) {
  constexpr int kLanes = 8;
  T acc_v[kLanes] = {};
  T acc_x[kLanes] = {};
  T acc_y[kLanes] = {};
  const T gy = T(1) - fy;
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const T g = grad[d + k];
      const T a = v0[d + k], b = v1[d + k], c = v2[d + k], e = v3[d + k];
      const T top = a + fx * (b - a);
      const T bottom = c + fx * (e - c);
      acc_v[k] += g * (top + fy * (bottom - top));
      acc_x[k] += g * (gy * (b - a) + fy * (e - c));
      acc_y[k] += g * (bottom - top);
      g0[d + k] += w0 * g;
      g1[d + k] += w1 * g;
      g2[d + k] += w2 * g;
      g3[d + k] += w3 * g;
    }
  }
  T tail_v = 0, tail_x = 0, tail_y = 0;
  for (; d < dim; ++d) {
    const T g = grad[d];
    const T a = v0[d], b = v1[d], c = v2[d], e = v3[d];
    const T top = a + fx * (b - a);
    const T bottom = c + fx * (e - c);
    tail_v += g * (top + fy * (bottom - top));
    tail_x += g * (gy * (b - a) + fy * (e - c));
    tail_y += g * (bottom - top);
    g0[d] += w0 * g;
    g1[d] += w1 * g;
    g2[d] += w2 * g;
    g3[d] += w3 * g;
  }
  SampleGrad out{tail_v, tail_x, tail_y};
  for (int k = 0; k < kLanes; ++k) {
    out.dot_value += acc_v[k];
    out.dot_dx += acc_x[k];
    out.dot_dy += acc_y[k];
  }
  return out;
}

template <typename T>
void forward_kernel(const T* value, const std::vector<Level>& levels, const T* locations,
                    const T* weights, T* out, const Sizes& n) {
  const int64_t key_stride = n.heads * n.dim;
  const int64_t samples = n.levels * n.points;
  const std::vector<T> zeros(n.dim, T(0));
  const T* zero_row = zeros.data();
  at::parallel_for(0, n.batch * n.num_queries, 32, [&](int64_t begin, int64_t end) {
    for (int64_t bq = begin; bq < end; ++bq) {
      const T* value_b = value + (bq / n.num_queries) * n.num_keys * key_stride;
      for (int64_t h = 0; h < n.heads; ++h) {
        const int64_t row = bq * n.heads + h;
        const T* loc = locations + row * samples * 2;
        const T* attn = weights + row * samples;
        T* out_row = out + row * n.dim;
        for (int64_t l = 0; l < n.levels; ++l) {
          const Level& lv = levels[l];
          const T* value_l = value_b + lv.start * key_stride + h * n.dim;
          for (int64_t s = l * n.points; s < (l + 1) * n.points; ++s) {
            BilinearCorners<T> c;
            if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], lv.height, lv.width, c)) {
              continue;
            }
            const T* v[4];
            for (int k = 0; k < 4; ++k) {
              v[k] = c.index[k] >= 0 ? value_l + c.index[k] * key_stride : zero_row;
            }
            const T a = attn[s];
            const T ax0 = a * (T(1) - c.fx), ax1 = a * c.fx;
            accumulate_corners(out_row, v[0], v[1], v[2], v[3], ax0 * (T(1) - c.fy),
                               ax1 * (T(1) - c.fy), ax0 * c.fy, ax1 * c.fy, n.dim);
          }
        }
      }
    }
  });
}

// Processes queries [q_begin, q_end) of one (batch, head) pair. grad_value_bh points at key 0
// of this pair's value-gradient slice, consecutive keys grad_key_stride elements apart.
template <typename T>
void backward_pair(const T* value, const std::vector<Level>& levels, const T* locations,
                   const T* weights, const T* grad_output, T* grad_value_bh,
                   int64_t grad_key_stride, T* grad_locations, T* grad_weights, const Sizes& n,
                   int64_t b, int64_t h, int64_t q_begin, int64_t q_end) {
  const int64_t key_stride = n.heads * n.dim;
  const int64_t samples = n.levels * n.points;
  const std::vector<T> zeros(n.dim, T(0));
  // Out-of-map corners scatter into a private scratch row per corner (never read back), so the
  // four gradient pointers never alias and the inner loop can be vectorised.
  std::vector<T> scratch(4 * n.dim, T(0));
  const T* value_bh = value + b * n.num_keys * key_stride + h * n.dim;
  for (int64_t q = q_begin; q < q_end; ++q) {
    const int64_t row = (b * n.num_queries + q) * n.heads + h;
    const T* loc = locations + row * samples * 2;
    const T* attn = weights + row * samples;
    const T* grad = grad_output + row * n.dim;
    T* grad_loc = grad_locations + row * samples * 2;
    T* grad_attn = grad_weights + row * samples;
    for (int64_t l = 0; l < n.levels; ++l) {
      const Level& lv = levels[l];
      const T* value_l = value_bh + lv.start * key_stride;
      T* grad_value_l = grad_value_bh + lv.start * grad_key_stride;
      for (int64_t s = l * n.points; s < (l + 1) * n.points; ++s) {
        BilinearCorners<T> c;
        if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], lv.height, lv.width, c)) {
          grad_loc[2 * s] = T(0);
          grad_loc[2 * s + 1] = T(0);
          grad_attn[s] = T(0);
          continue;
        }
        const T* v[4];
        T* g[4];
        for (int k = 0; k < 4; ++k) {
          const bool inside = c.index[k] >= 0;
          v[k] = inside ? value_l + c.index[k] * key_stride : zeros.data();
          g[k] = inside ? grad_value_l + c.index[k] * grad_key_stride : scratch.data() + k * n.dim;
        }
        const T a = attn[s];
        const T ax0 = a * (T(1) - c.fx), ax1 = a * c.fx;
        const SampleGrad sg = sample_backward(grad, v[0], v[1], v[2], v[3], g[0], g[1], g[2], g[3],
                                              c.fx, c.fy, ax0 * (T(1) - c.fy), ax1 * (T(1) - c.fy),
                                              ax0 * c.fy, ax1 * c.fy, n.dim);
        grad_attn[s] = static_cast<T>(sg.dot_value);
        // pixel x = u * W - 0.5, so d/du = W * d/dx.
        grad_loc[2 * s] = static_cast<T>(a * sg.dot_dx * lv.width);
        grad_loc[2 * s + 1] = static_cast<T>(a * sg.dot_dy * lv.height);
      }
    }
  }
}

template <typename T>
void backward_kernel(const T* value, const std::vector<Level>& levels, const T* locations,
                     const T* weights, const T* grad_output, T* grad_value, T* grad_locations,
                     T* grad_weights, const Sizes& n) {
  const int64_t pairs = n.batch * n.heads;
  const int64_t threads = at::get_num_threads();
  // Enough (pair, chunk) tasks to keep every thread busy with equal shares; no chunking when
  // there are many pairs per thread anyway.
  int64_t chunks = 1;
  if (pairs < 4 * threads) {
    chunks = threads / std::gcd(pairs, threads);
  }
  chunks = std::max<int64_t>(1, std::min(chunks, n.num_queries));
  const int64_t key_stride = n.heads * n.dim;
  // Private value-gradient slices of chunks 1..chunks-1: [chunks - 1, B, heads, S, D].
  std::vector<T> partial;
  if (chunks > 1) {
    partial.assign(static_cast<size_t>((chunks - 1) * pairs * n.num_keys * n.dim), T(0));
  }
  at::parallel_for(0, pairs * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t pair = task / chunks;
      const int64_t b = pair / n.heads;
      const int64_t h = pair % n.heads;
      const int64_t q_begin = n.num_queries * chunk / chunks;
      const int64_t q_end = n.num_queries * (chunk + 1) / chunks;
      T* grad_value_bh;
      int64_t grad_key_stride;
      if (chunk == 0) {
        grad_value_bh = grad_value + b * n.num_keys * key_stride + h * n.dim;
        grad_key_stride = key_stride;
      } else {
        grad_value_bh = partial.data() + ((chunk - 1) * pairs + pair) * n.num_keys * n.dim;
        grad_key_stride = n.dim;
      }
      backward_pair(value, levels, locations, weights, grad_output, grad_value_bh,
                    grad_key_stride, grad_locations, grad_weights, n, b, h, q_begin, q_end);
    }
  });
  if (chunks > 1) {
    at::parallel_for(0, n.batch * n.num_keys, 256, [&](int64_t begin, int64_t end) {
      for (int64_t bs = begin; bs < end; ++bs) {
        const int64_t b = bs / n.num_keys;
        const int64_t s = bs % n.num_keys;
        for (int64_t h = 0; h < n.heads; ++h) {
          T* dst = grad_value + bs * key_stride + h * n.dim;
          for (int64_t chunk = 1; chunk < chunks; ++chunk) {
            const T* src = partial.data() +
                           (((chunk - 1) * pairs + b * n.heads + h) * n.num_keys + s) * n.dim;
            for (int64_t d = 0; d < n.dim; ++d) {
              dst[d] += src[d];
            }
          }
        }
      }
    });
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights) {
  const Sizes n = read_sizes(value, sampling_locations);
  const std::vector<Level> levels = read_levels(spatial_shapes, level_start_index, n.num_keys);
  auto out = at::zeros({n.batch, n.num_queries, n.heads * n.dim}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel<scalar_t>(value.data_ptr<scalar_t>(), levels,
                             sampling_locations.data_ptr<scalar_t>(),
                             attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const Sizes n = read_sizes(value, sampling_locations);
  const std::vector<Level> levels = read_levels(spatial_shapes, level_start_index, n.num_keys);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  if (n.batch * n.num_queries * n.heads * n.dim * n.levels * n.points == 0) {
    return {grad_value, grad_locations, grad_weights};
  }
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel<scalar_t>(value.data_ptr<scalar_t>(), levels,
                              sampling_locations.data_ptr<scalar_t>(),
                              attention_weights.data_ptr<scalar_t>(),
                              grad_output.data_ptr<scalar_t>(), grad_value.data_ptr<scalar_t>(),
                              grad_locations.data_ptr<scalar_t>(),
                              grad_weights.data_ptr<scalar_t>(), n);
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace uniovseg
