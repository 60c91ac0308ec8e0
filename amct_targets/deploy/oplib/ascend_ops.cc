// TensorFlow ops and CPU kernels for the op types of an AMCT deploy graph, so that stock
// TensorFlow can import and run the .pb once this library is loaded
// (amct_targets/deploy/oplib/__init__.py builds it at first use and caches it).
//
//   AscendQuant, AscendWeightQuant, AscendDequant, AscendAntiQuant
//       Op signatures as Huawei's tf_adapter registers them (tf_adapter/ops/aicore/amct_ops.cc):
//       same inputs, outputs, attrs and defaults, so .pb files written by AMCT import too.
//       Kernels for T=float32 only, like tf_adapter's (its ops accept float16/float64 but it
//       registers float32 kernels alone).
//   FastSoftmax
//       amct-targets' approximate Softmax (amct_targets/approx/kernel.py); not a tf_adapter op.
//
// Numerics: every kernel repeats, step by step and in the same float32/double precision, the
// NumPy reference in amct_targets (deploy/ascend_ops.py: ref_ascend_*; approx/kernel.py:
// ref_fast_softmax), which follows the tf_adapter kernels. The library is compiled with
// -ffp-contract=off so that no multiply-add pair is fused into one FMA rounding.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace amct_targets {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;

template <typename... Parts>
absl::Status InvalidArgument(const Parts&... parts) {
  return absl::InvalidArgumentError(absl::StrCat(parts...));
}

// tf_adapter's kernels index elements with a C int and refuse larger tensors; so do these.
constexpr int64_t kMaxElements = std::numeric_limits<int32_t>::max();
// The shift-N path of AscendDequant saturates to int16.
constexpr double kInt16Min = -32768.0;
constexpr double kInt16Max = 32767.0;

// Refuses what tf_adapter's kernels refuse: more than 2^31-1 elements, and an empty input.
absl::Status CheckInput(const OpKernel& op, const Tensor& x, const char* input_name) {
  if (x.NumElements() > kMaxElements) {
    return InvalidArgument(op.type_string(), " '", op.name(), "': input ", input_name,
                           " has ", x.NumElements(),
                           " elements, more than the kernel's limit of 2^31-1");
  }
  if (x.NumElements() == 0) {
    return InvalidArgument(op.type_string(), " '", op.name(), "': input ", input_name,
                           " is empty (shape ", x.shape().DebugString(),
                           "); the Ascend kernels refuse empty tensors");
  }
  return absl::OkStatus();
}

// min(max(v, low), high), but NaN stays NaN (like np.clip).
template <typename F>
F Clamp(F v, F low, F high) {
  return v < low ? low : (v > high ? high : v);
}

// --- AscendQuant ------------------------------------------------------------------------------
//   q = clamp(round(x * scale) + offset, -2^(b-1), 2^(b-1) - 1);  y = q - offset
// with C round (ties away from zero) and b from dst_type. quant_bits is accepted but not read,
// as in tf_adapter's kernel.

REGISTER_OP("AscendQuant")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float16, float32, float64}")
    .Attr("dst_type: {'INT4', 'INT8'} = 'INT8'")
    .Attr("quant_bits: int = 8")
    .Attr("scale: float")
    .Attr("offset: float")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

class AscendQuantOp : public OpKernel {
 public:
  explicit AscendQuantOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string dst_type;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dst_type", &dst_type));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("offset", &offset_));
    const int bits = dst_type == "INT4" ? 4 : 8;  // the attr allows only INT4 and INT8
    high_ = std::ldexp(1.0f, bits - 1) - 1.0f;
    low_ = -std::ldexp(1.0f, bits - 1);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckInput(*this, x, "x"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const int64_t n = x.NumElements();
    for (int64_t i = 0; i < n; ++i) {
      // std::round on a float: nearest integer, ties away from zero, exact in float32.
      const float q = std::round(in[i] * scale_) + offset_;
      out[i] = Clamp(q, low_, high_) - offset_;
    }
  }

 private:
  float scale_ = 1.0f;
  float offset_ = 0.0f;
  float low_ = -128.0f;
  float high_ = 127.0f;
};

REGISTER_KERNEL_BUILDER(Name("AscendQuant").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        AscendQuantOp);

// --- AscendWeightQuant ------------------------------------------------------------------------
//   y = float(x) - float(offset_w)
// offset_w broadcasts against x like NumPy (the reference is x - offset_w): one element for the
// whole tensor, or one per channel along each axis where its shape is not 1. That covers both
// layouts tf_adapter's kernel handles ([1,1,1,Cout] along the last axis of an HWCN weight,
// [1,1,C,1] along axis 2 of a depthwise weight) and the 1-D per-channel form.

REGISTER_OP("AscendWeightQuant")
    .Input("x: int8")
    .Input("offset_w: int8")
    .Output("y: T")
    .Attr("T: {float16, float32, float64}")
    .Attr("dst_type: {'INT4', 'INT8'} = 'INT8'")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

class AscendWeightQuantOp : public OpKernel {
 public:
  explicit AscendWeightQuantOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& offset = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckInput(*this, x, "x"));
    OP_REQUIRES_OK(ctx, CheckInput(*this, offset, "offset_w"));
    // For each axis of x: its length and the stride of offset_w along it (0: broadcast).
    const int rank = x.dims();
    std::vector<int64_t> lengths, offset_strides;
    if (offset.NumElements() > 1) {
      OP_REQUIRES(ctx, offset.dims() <= rank,
                  InvalidArgument("AscendWeightQuant '", name(), "': offset_w of shape ",
                                  offset.shape().DebugString(),
                                  " has more axes than the weight ",
                                  x.shape().DebugString()));
      int64_t stride = 1;
      for (int axis = rank - 1; axis >= 0; --axis) {
        const int offset_axis = axis - (rank - offset.dims());
        const int64_t length = offset_axis >= 0 ? offset.dim_size(offset_axis) : 1;
        OP_REQUIRES(ctx, length == 1 || length == x.dim_size(axis),
                    InvalidArgument(
                        "AscendWeightQuant '", name(), "': offset_w of shape ",
                        offset.shape().DebugString(), " does not broadcast against the weight ",
                        x.shape().DebugString()));
        lengths.push_back(x.dim_size(axis));
        offset_strides.push_back(length > 1 ? stride : 0);
        stride *= length;
      }
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const int8_t* weight = x.flat<int8_t>().data();
    const int8_t* offsets = offset.flat<int8_t>().data();
    float* out = y->flat<float>().data();
    const int64_t n = x.NumElements();
    if (lengths.empty()) {  // one offset for the whole tensor
      const float offset_w = static_cast<float>(offsets[0]);
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(weight[i]) - offset_w;
      return;
    }
    // lengths/offset_strides run from the last axis to the first.
    for (int64_t i = 0; i < n; ++i) {
      int64_t rest = i, offset_index = 0;
      for (size_t k = 0; k < lengths.size(); ++k) {
        offset_index += (rest % lengths[k]) * offset_strides[k];
        rest /= lengths[k];
      }
      out[i] = static_cast<float>(weight[i]) - static_cast<float>(offsets[offset_index]);
    }
  }
};

REGISTER_KERNEL_BUILDER(
    Name("AscendWeightQuant").Device(DEVICE_CPU).TypeConstraint<float>("T"),
    AscendWeightQuantOp);

// --- AscendDequant ----------------------------------------------------------------------------
// deq_scale packs, per channel, deq (float32, bits [31:0]) and the shift N (bits [39:32]).
// With area = ksize[0] * ksize[1] (an AvgPool's window; 1 x 1 after a Conv/MatMul):
//   t = x * area                                              float32
//   if N > 0: t = clamp(floor(t / 2^N), -2^15, 2^15 - 1)       in double, stored as float32
//   y = float32(double(t * deq) * 2^N / area)                  t * deq in float32, rest double
// One deq_scale element applies to the whole tensor; more are one per channel, along the last
// axis (data_format NHWC or anything but NCHW) or along axis 1 of a 4-D NCHW tensor.

REGISTER_OP("AscendDequant")
    .Input("x: T")
    .Input("deq_scale: uint64")
    .Output("y: T")
    .Attr("T: {float16, float32, float64}")
    .Attr("ksize: list(int)")
    .Attr("data_format: string = 'NHWC'")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

struct DeqChannel {
  float deq;
  unsigned shift;
  double two_pow_shift;
};

class AscendDequantOp : public OpKernel {
 public:
  explicit AscendDequantOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::vector<int64_t> ksize;
    std::string data_format;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ksize", &ksize));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("data_format", &data_format));
    OP_REQUIRES(ctx, ksize.size() >= 2 && ksize[0] > 0 && ksize[1] > 0,
                InvalidArgument("AscendDequant '", name(),
                                "': ksize must start with two positive entries (the "
                                "pooling window, [1, 1] after a Conv or MatMul), got [",
                                absl::StrJoin(ksize, ", "), "]"));
    area_ = ksize[0] * ksize[1];
    nchw_ = data_format == "NCHW";
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const Tensor& deq_scale = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckInput(*this, x, "x"));
    OP_REQUIRES_OK(ctx, CheckInput(*this, deq_scale, "deq_scale"));
    const int64_t channels = deq_scale.NumElements();
    int64_t channel_stride = 1;  // elements between two consecutive channels
    if (channels > 1) {
      if (nchw_) {
        OP_REQUIRES(ctx, x.dims() == 4 && x.dim_size(1) == channels,
                    InvalidArgument("AscendDequant '", name(), "': ", channels,
                                    " per-channel deq_scale values need a 4-D NCHW input"
                                    " with as many channels on axis 1, got shape ",
                                    x.shape().DebugString()));
        channel_stride = x.dim_size(2) * x.dim_size(3);
      } else {
        OP_REQUIRES(ctx, x.dims() >= 1 && x.dim_size(x.dims() - 1) == channels,
                    InvalidArgument("AscendDequant '", name(), "': ", channels,
                                    " per-channel deq_scale values need as many "
                                    "channels on the input's last axis, got shape ",
                                    x.shape().DebugString()));
      }
    }
    std::vector<DeqChannel> table(channels);
    const uint64_t* packed = deq_scale.flat<uint64_t>().data();
    for (int64_t c = 0; c < channels; ++c) {
      const uint32_t deq_bits = static_cast<uint32_t>(packed[c] & 0xFFFFFFFFu);
      std::memcpy(&table[c].deq, &deq_bits, sizeof(float));
      table[c].shift = static_cast<unsigned>((packed[c] >> 32) & 0xFFu);
      table[c].two_pow_shift = std::ldexp(1.0, static_cast<int>(table[c].shift));
    }
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const float area = static_cast<float>(area_);
    const double area_d = static_cast<double>(area_);
    const int64_t n = x.NumElements();
    for (int64_t i = 0; i < n; ++i) {
      const DeqChannel& ch = table[channels == 1 ? 0 : (i / channel_stride) % channels];
      float t = in[i] * area;
      if (ch.shift > 0) {
        const double down = std::floor(static_cast<double>(t) / ch.two_pow_shift);
        t = static_cast<float>(Clamp(down, kInt16Min, kInt16Max));
      }
      const float scaled = t * ch.deq;
      out[i] = static_cast<float>(static_cast<double>(scaled) * ch.two_pow_shift / area_d);
    }
  }

 private:
  int64_t area_ = 1;
  bool nchw_ = false;
};

REGISTER_KERNEL_BUILDER(Name("AscendDequant").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        AscendDequantOp);

// --- AscendAntiQuant --------------------------------------------------------------------------
//   y = x * scale
// tf_adapter's CPU kernel does not apply `offset`: in the TF graph x already holds q - offset.

REGISTER_OP("AscendAntiQuant")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float16, float32, float64}")
    .Attr("scale: float")
    .Attr("offset: float")
    .SetIsStateful()
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

class AscendAntiQuantOp : public OpKernel {
 public:
  explicit AscendAntiQuantOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckInput(*this, x, "x"));
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    const int64_t n = x.NumElements();
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] * scale_;
  }

 private:
  float scale_ = 1.0f;
};

REGISTER_KERNEL_BUILDER(
    Name("AscendAntiQuant").Device(DEVICE_CPU).TypeConstraint<float>("T"), AscendAntiQuantOp);

// --- FastSoftmax ------------------------------------------------------------------------------
// Along `axis`, with m the maximum over the axis:
//   t = max(x - m, -clip_value);  p = ((t * b + a) * t + 1) * t + 1      float32, in this order
//   y = p / float32(sum of p in double)                                  one rounding of the sum
// The double sum of these float32 values is exact for any row the fit produces (p >= 5e-6, a
// few thousand entries), so it does not depend on the summation order.

REGISTER_OP("FastSoftmax")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float32} = DT_FLOAT")
    .Attr("a: float")
    .Attr("b: float")
    .Attr("clip_value: float")
    .Attr("axis: int = -1")
    .SetShapeFn(::tensorflow::shape_inference::UnchangedShape);

class FastSoftmaxOp : public OpKernel {
 public:
  explicit FastSoftmaxOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    float clip_value = 0.0f;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("a", &a_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("b", &b_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clip_value", &clip_value));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("axis", &axis_));
    neg_clip_ = -clip_value;
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    const int rank = x.dims();
    OP_REQUIRES(ctx, x.NumElements() <= kMaxElements,
                InvalidArgument("FastSoftmax '", name(), "': input has ",
                                x.NumElements(), " elements, more than 2^31-1"));
    OP_REQUIRES(ctx, rank >= 1 && axis_ >= -rank && axis_ < rank,
                InvalidArgument("FastSoftmax '", name(), "': axis ", axis_,
                                " is out of range for an input of shape ",
                                x.shape().DebugString()));
    const int axis = axis_ < 0 ? axis_ + rank : static_cast<int>(axis_);
    Tensor* y = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    if (x.NumElements() == 0) return;
    int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= x.dim_size(d);
    for (int d = axis + 1; d < rank; ++d) inner *= x.dim_size(d);
    const int64_t length = x.dim_size(axis);
    const float* in = x.flat<float>().data();
    float* out = y->flat<float>().data();
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t j = 0; j < inner; ++j) {
        const int64_t base = o * length * inner + j;
        Row(in + base, out + base, length, inner);
      }
    }
  }

 private:
  // One row of `length` entries, `stride` apart; p is kept in `out` until the division.
  void Row(const float* in, float* out, int64_t length, int64_t stride) const {
    float m = in[0];
    for (int64_t k = 1; k < length; ++k) {
      const float v = in[k * stride];
      if (std::isnan(v)) {  // NaN propagates like np.max
        m = v;
        break;
      }
      if (v > m) m = v;
    }
    double total = 0.0;
    for (int64_t k = 0; k < length; ++k) {
      const float z = in[k * stride] - m;
      const float t = z < neg_clip_ ? neg_clip_ : z;  // NaN stays NaN, like np.maximum
      float p = t * b_ + a_;
      p = p * t + 1.0f;
      p = p * t + 1.0f;
      out[k * stride] = p;
      total += static_cast<double>(p);
    }
    const float sum = static_cast<float>(total);
    for (int64_t k = 0; k < length; ++k) out[k * stride] = out[k * stride] / sum;
  }

  float a_ = 0.0f;
  float b_ = 0.0f;
  float neg_clip_ = 0.0f;
  int64_t axis_ = -1;
};

REGISTER_KERNEL_BUILDER(Name("FastSoftmax").Device(DEVICE_CPU).TypeConstraint<float>("T"),
                        FastSoftmaxOp);

}  // namespace
}  // namespace amct_targets
