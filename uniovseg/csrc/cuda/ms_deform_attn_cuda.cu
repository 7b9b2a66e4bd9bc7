// CUDA kernels of multi-scale deformable attention, forward and backward (float32, float64;
// the dispatcher computes float16/bfloat16 inputs in float32).
//
// One warp handles one (batch, query, head) row; its lanes stride over the head_dim channels, so
// loads of a key's channels are coalesced. The sampling geometry is warp-uniform. Backward
// reduces the per-channel products for the location and attention-weight gradients with warp
// shuffles (each written once, no atomics) and scatters the value gradient with atomic adds
// (many queries sample the same key).
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../bilinear.h"
#include "../ms_deform_attn.h"

namespace uniovseg {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / kWarp;

struct Sizes {
  int64_t rows;  // B * Q * heads
  int64_t num_queries;
  int64_t num_keys;
  int64_t heads;
  int64_t dim;
  int64_t levels;
  int64_t points;
};

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                   const int64_t* __restrict__ level_start_index,
                   const T* __restrict__ locations, const T* __restrict__ weights,
                   T* __restrict__ out, const Sizes n) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n.rows) {
    return;  // warp-uniform: all lanes of a warp share the row
  }
  const int64_t h = row % n.heads;
  const int64_t b = row / (n.heads * n.num_queries);
  const int64_t key_stride = n.heads * n.dim;
  const int64_t samples = n.levels * n.points;
  const T* value_bh = value + b * n.num_keys * key_stride + h * n.dim;
  const T* loc = locations + row * samples * 2;
  const T* attn = weights + row * samples;
  for (int64_t d = lane; d - lane < n.dim; d += kWarp) {
    const bool active = d < n.dim;
    T acc = T(0);
    for (int64_t l = 0; l < n.levels; ++l) {
      const int64_t height = spatial_shapes[2 * l];
      const int64_t width = spatial_shapes[2 * l + 1];
      const T* value_l = value_bh + level_start_index[l] * key_stride;
      for (int64_t s = l * n.points; s < (l + 1) * n.points; ++s) {
        BilinearCorners<T> c;
        if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], height, width, c) || !active) {
          continue;
        }
        const T a = attn[s];
        const T w[4] = {(T(1) - c.fx) * (T(1) - c.fy), c.fx * (T(1) - c.fy),
                        (T(1) - c.fx) * c.fy, c.fx * c.fy};
        T sample = T(0);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.index[k] >= 0) {
            sample += w[k] * value_l[c.index[k] * key_stride + d];
          }
        }
        acc += a * sample;
      }
    }
    if (active) {
      out[row * n.dim + d] = acc;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                    const int64_t* __restrict__ level_start_index,
                    const T* __restrict__ locations, const T* __restrict__ weights,
                    const T* __restrict__ grad_output, T* __restrict__ grad_value,
                    T* __restrict__ grad_locations, T* __restrict__ grad_weights,
                    const Sizes n) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= n.rows) {
    return;  // warp-uniform, so the full-mask shuffles below stay valid
  }
  const int64_t h = row % n.heads;
  const int64_t b = row / (n.heads * n.num_queries);
  const int64_t key_stride = n.heads * n.dim;
  const int64_t samples = n.levels * n.points;
  const int64_t value_offset = b * n.num_keys * key_stride + h * n.dim;
  const T* loc = locations + row * samples * 2;
  const T* attn = weights + row * samples;
  const T* grad = grad_output + row * n.dim;
  for (int64_t l = 0; l < n.levels; ++l) {
    const int64_t height = spatial_shapes[2 * l];
    const int64_t width = spatial_shapes[2 * l + 1];
    const int64_t level_offset = value_offset + level_start_index[l] * key_stride;
    for (int64_t s = l * n.points; s < (l + 1) * n.points; ++s) {
      BilinearCorners<T> c;
      if (!bilinear_corners(loc[2 * s], loc[2 * s + 1], height, width, c)) {
        continue;  // outputs were zero-initialised
      }
      const T a = attn[s];
      const T gx = T(1) - c.fx;
      const T gy = T(1) - c.fy;
      const T w[4] = {gx * gy, c.fx * gy, gx * c.fy, c.fx * c.fy};
      T dot_value = T(0), dot_dx = T(0), dot_dy = T(0);
      for (int64_t d = lane; d < n.dim; d += kWarp) {
        const T g = grad[d];
        T v[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          v[k] = c.index[k] >= 0 ? value[level_offset + c.index[k] * key_stride + d] : T(0);
        }
        const T top = v[0] + c.fx * (v[1] - v[0]);
        const T bottom = v[2] + c.fx * (v[3] - v[2]);
        dot_value += g * (top + c.fy * (bottom - top));
        dot_dx += g * (gy * (v[1] - v[0]) + c.fy * (v[3] - v[2]));
        dot_dy += g * (bottom - top);
        const T ag = a * g;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.index[k] >= 0) {
            gpuAtomicAdd(grad_value + level_offset + c.index[k] * key_stride + d, w[k] * ag);
          }
        }
      }
      dot_value = warp_sum(dot_value);
      dot_dx = warp_sum(dot_dx);
      dot_dy = warp_sum(dot_dy);
      if (lane == 0) {
        grad_weights[row * samples + s] = dot_value;
        // pixel x = u * W - 0.5, so d/du = W * d/dx.
        grad_locations[(row * samples + s) * 2] = a * dot_dx * static_cast<T>(width);
        grad_locations[(row * samples + s) * 2 + 1] = a * dot_dy * static_cast<T>(height);
      }
    }
  }
}

Sizes read_sizes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{value.size(0) * sampling_locations.size(1) * value.size(2),
               sampling_locations.size(1),
               value.size(1),
               value.size(2),
               value.size(3),
               sampling_locations.size(3),
               sampling_locations.size(4)};
}

unsigned int num_blocks(int64_t rows) {
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  TORCH_CHECK(blocks <= 0x7fffffff, "ms_deform_attn: too many (batch, query, head) rows: ", rows);
  return static_cast<unsigned int>(blocks);
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  const at::cuda::OptionalCUDAGuard device_guard(value.device());
  const Sizes n = read_sizes(value, sampling_locations);
  auto out = at::zeros({value.size(0), n.num_queries, n.heads * n.dim}, value.options());
  if (out.numel() == 0) {
    return out;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(n.rows), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
        attention_weights.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const at::cuda::OptionalCUDAGuard device_guard(value.device());
  const Sizes n = read_sizes(value, sampling_locations);
  auto grad_value = at::zeros_like(value);
  auto grad_locations = at::zeros_like(sampling_locations);
  auto grad_weights = at::zeros_like(attention_weights);
  if (n.rows * n.dim * n.levels * n.points == 0) {
    return {grad_value, grad_locations, grad_weights};
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(n.rows), kThreads, 0, stream>>>(
        value.data_ptr<scalar_t>(), spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(), sampling_locations.data_ptr<scalar_t>(),
        attention_weights.data_ptr<scalar_t>(), grad_output.data_ptr<scalar_t>(),
        grad_value.data_ptr<scalar_t>(), grad_locations.data_ptr<scalar_t>(),
        grad_weights.data_ptr<scalar_t>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace uniovseg
