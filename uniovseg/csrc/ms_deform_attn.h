// Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021): declarations shared by the
// dispatcher (ms_deform_attn.cpp), the CPU kernels and the CUDA kernels.
//
// Tensor layouts (all contiguous, same floating dtype, float32 or float64 inside the kernels):
//   value               [B, S, heads, D]     keys of all levels, row-major per level
//   spatial_shapes      [L, 2] int64         (H_l, W_l)
//   level_start_index   [L] int64            offset of each level in S
//   sampling_locations  [B, Q, heads, L, P, 2]  normalised (x, y); pixel x = u * W - 0.5
//   attention_weights   [B, Q, heads, L, P]
//   output              [B, Q, heads * D]
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace uniovseg {

at::Tensor ms_deform_attn_forward_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                      const at::Tensor& level_start_index,
                                      const at::Tensor& sampling_locations,
                                      const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output);
#endif

}  // namespace uniovseg
