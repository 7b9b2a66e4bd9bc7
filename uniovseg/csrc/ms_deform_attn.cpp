// Python bindings of uniovseg._C: input checks, dtype handling and device dispatch of the
// multi-scale deformable-attention kernels.
//
// The kernels compute in float32 or float64. float16/bfloat16 inputs are computed in float32 and
// the results cast back to the input dtypes, so low-precision callers get correct (not
// half-precision-accumulated) results.
#include <torch/extension.h>

#include "ms_deform_attn.h"

namespace uniovseg {
namespace {

void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights) {
  TORCH_CHECK(value.dim() == 4, "ms_deform_attn: value must be [B, S, heads, D], got ",
              value.sizes());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [B, Q, heads, L, P, 2], got ",
              sampling_locations.sizes());
  TORCH_CHECK(sampling_locations.size(0) == value.size(0) &&
                  sampling_locations.size(2) == value.size(2),
              "ms_deform_attn: sampling_locations ", sampling_locations.sizes(),
              " does not match value ", value.sizes(), " in batch or heads");
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5),
              "ms_deform_attn: attention_weights must be [B, Q, heads, L, P] = ",
              sampling_locations.sizes().slice(0, 5), ", got ", attention_weights.sizes());
  const int64_t levels = sampling_locations.size(3);
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == levels &&
                  spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be [L, 2] with L = ", levels, ", got ",
              spatial_shapes.sizes());
  TORCH_CHECK(level_start_index.dim() == 1 && level_start_index.size(0) == levels,
              "ms_deform_attn: level_start_index must be [L] with L = ", levels, ", got ",
              level_start_index.sizes());
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong &&
                  level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes and level_start_index must be int64");
  for (const at::Tensor* t : {&value, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(at::isFloatingType(t->scalar_type()),
                "ms_deform_attn: value, sampling_locations and attention_weights must be "
                "floating point, got ",
                t->scalar_type());
  }
  for (const at::Tensor* t :
       {&spatial_shapes, &level_start_index, &sampling_locations, &attention_weights}) {
    TORCH_CHECK(t->device() == value.device(),
                "ms_deform_attn: all inputs must be on the device of value (", value.device(),
                "), got one on ", t->device());
  }
}

// float16/bfloat16 -> float32; float32/float64 unchanged (promoted across the three inputs).
at::ScalarType compute_type(const at::Tensor& value, const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights) {
  auto type = at::promote_types(
      value.scalar_type(),
      at::promote_types(sampling_locations.scalar_type(), attention_weights.scalar_type()));
  if (type == at::kHalf || type == at::kBFloat16) {
    type = at::kFloat;
  }
  return type;
}

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

at::Tensor forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                   const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                   const at::Tensor& attention_weights) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const auto type = compute_type(value, sampling_locations, attention_weights);
  const auto v = value.to(type).contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.to(type).contiguous();
  const auto attn = attention_weights.to(type).contiguous();
  at::Tensor out;
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    out = ms_deform_attn_forward_cuda(v, shapes, starts, loc, attn);
#else
    TORCH_CHECK(false, "ms_deform_attn: uniovseg._C was built without CUDA; rebuild with a GPU "
                       "or FORCE_CUDA=1, or use backend='pytorch'");
#endif
  } else {
    TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device());
    out = ms_deform_attn_forward_cpu(v, shapes, starts, loc, attn);
  }
  return out.to(value.scalar_type());
}

std::vector<at::Tensor> backward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                 const at::Tensor& level_start_index,
                                 const at::Tensor& sampling_locations,
                                 const at::Tensor& attention_weights,
                                 const at::Tensor& grad_output) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  TORCH_CHECK(grad_output.dim() == 3 && grad_output.size(0) == value.size(0) &&
                  grad_output.size(1) == sampling_locations.size(1) &&
                  grad_output.size(2) == value.size(2) * value.size(3),
              "ms_deform_attn: grad_output must be [B, Q, heads * D], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.device() == value.device(),
              "ms_deform_attn: grad_output must be on the device of value");
  const auto type = compute_type(value, sampling_locations, attention_weights);
  const auto v = value.to(type).contiguous();
  const auto shapes = spatial_shapes.contiguous();
  const auto starts = level_start_index.contiguous();
  const auto loc = sampling_locations.to(type).contiguous();
  const auto attn = attention_weights.to(type).contiguous();
  const auto grad = grad_output.to(type).contiguous();
  std::vector<at::Tensor> grads;
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    grads = ms_deform_attn_backward_cuda(v, shapes, starts, loc, attn, grad);
#else
    TORCH_CHECK(false, "ms_deform_attn: uniovseg._C was built without CUDA; rebuild with a GPU "
                       "or FORCE_CUDA=1, or use backend='pytorch'");
#endif
  } else {
    TORCH_CHECK(value.is_cpu(), "ms_deform_attn: unsupported device ", value.device());
    grads = ms_deform_attn_backward_cpu(v, shapes, starts, loc, attn, grad);
  }
  return {grads[0].to(value.scalar_type()), grads[1].to(sampling_locations.scalar_type()),
          grads[2].to(attention_weights.scalar_type())};
}

}  // namespace
}  // namespace uniovseg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "uniovseg compiled ops: multi-scale deformable attention (CPU, optional CUDA)";
  m.def("ms_deform_attn_forward", &uniovseg::forward,
        "forward(value, spatial_shapes, level_start_index, sampling_locations, "
        "attention_weights) -> output [B, Q, heads * D]");
  m.def("ms_deform_attn_backward", &uniovseg::backward,
        "backward(value, spatial_shapes, level_start_index, sampling_locations, "
        "attention_weights, grad_output) -> [grad_value, grad_locations, grad_weights]");
  m.def("compiled_with_cuda", &uniovseg::compiled_with_cuda,
        "True when the CUDA kernels were compiled into this extension");
}
