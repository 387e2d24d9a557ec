// hoe's ops (domain hoe.ort) for onnxruntime's CPU provider: shapes checked, then mixture.cc / attention.cc
// compute.
//
// Mixture
//   inputs   Y [B,T,>=N] f32, F [B,T,h_offset + m·E·r + m·K·E] f32, router_mix [B,K] f32,
//            levels [tiles, E·r, 64] u8, scales and zeros [blocks, tiles·64] f32 (mixture.h), optional offsets
//            [k_blocks, N] f32
//   attrs    h_offset, block_size, modules m, width_0 .. width_{m-1} (N = their sum); with offsets sums_offset
//            (F's first x·S column)
//   outputs  Z [B,T,N] f32, or one [B,T,w_i] per module (variadic)
// E and r follow from the shapes: m·K·E logits after m·E·r lora_A columns, E·r rows of levels.
//
// Attention
//   inputs   q [B,T,H·D], k and v [B,T,Hkv·D] f32, past_key and past_value [B,Hkv,C,D] f32 (P = S − T columns
//            used), bias [B,1,T,S] f32 (additive), optional position_ids [B,T] i64, cos and sin [max_pos, D/2] f32
//            (given: q and k rotated inside, attention.h Rotary; absent: q and k come rotated)
//   attrs    num_heads H, kv_num_heads Hkv, scale
//   outputs  out [B,T,H·D], present_key and present_value [B,Hkv,max(C,S),D]: bound to the past's buffer, only
//            the new columns are written (attention.h)
// AttentionInt8: the same with an int8 cache, past and present int8 [B,Hkv,C,D+4] (D values, then their fp32
//            scale: attention.h)
//
// MatMulInt4
//   inputs   x [..., K] f32, packed [ceil(N/64), ceil(K/32), 1280] u8 (linear.h), optional bias [N] f32
//   attrs    K, N, accuracy_level (0: fp32 activations, else int8: linear.h)
//   outputs  y [..., N] f32
// With the norm prologue (norm.h), optional inputs 3 skip [..., K] and 4 gamma [K] f32 with the float attribute
// epsilon: given gamma, the product reads rms_norm(x + skip)·gamma (skip absent:
// rms_norm(x)·gamma); given skip too, the optional output 1 is x + skip [..., K] (the residual stream).
// With the SwiGLU epilogue (activation.h), attribute swiglu = 1 and N even: y [..., N/2] = silu(gate)·up of the
// product's halves [gate | up].
//
// MatMulInt4Mixture
//   inputs   x [B,T,K], packed, bias [N] (MatMulInt4's), router_mix, levels, scales, zeros, optional offsets
//            (the Mixture's)
//   attrs    MatMulInt4's and the Mixture's
//   outputs  the Mixture's, on Y = F = MatMulInt4's [B,T,N] output (in a scratch buffer per thread, not a tensor)
//            With the norm prologue, inputs 8 skip and 9 gamma and attribute epsilon as MatMulInt4's; given skip,
//            the last output is x + skip [B,T,K] (after the Mixture's 1 or m).
//            With the SwiGLU epilogue (swiglu = 1, m = 2 modules of one width W: gate, then up), one output
//            [B,T,W] = silu(gate)·up instead of the modules' (then x + skip, given skip).
//
// GatherInt4
//   inputs   packed (MatMulInt4's weight), ids [...] i64
//   attrs    K, N
//   outputs  y [..., K] f32: y[..., :] = W[:, id] (linear.h linear_columns), a tied embedding read from the lm_head
#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "activation.h"
#include "attention.h"
#include "linear.h"
#include "mixture.h"
#include "norm.h"
#include "ort_abi.h"

namespace hoe::ort {
namespace {

const OrtApi* g_api = nullptr;
bool g_parallel = false;  // KernelContext_ParallelFor is in this onnxruntime's table

template <typename Fn>
Fn slot(size_t index) {
  return reinterpret_cast<Fn>(reinterpret_cast<void* const*>(g_api)[index]);
}

OrtStatus* error(const char* op, const std::string& message) {
  return slot<OrtStatus* (*)(int, const char*)>(kCreateStatus)(kInvalidArgument,
                                                               ("hoe.ort." + std::string(op) + ": " + message).c_str());
}

OrtStatus* error(const std::string& message) { return error("Mixture", message); }

void release(OrtStatus* status) { slot<void (*)(OrtStatus*)>(kReleaseStatus)(status); }

#define HOE_TRY(call)                      \
  do {                                     \
    if (OrtStatus* status_ = (call)) return status_; \
  } while (0)

struct Dims {  // a tensor's shape, rank <= 4 (no allocation per call)
  int64_t d[4] = {};
  size_t rank = 0;
  size_t size() const { return rank; }
  int64_t operator[](size_t i) const { return d[i]; }
};

struct Tensor {
  Dims dims;
  void* data = nullptr;
};

OrtStatus* read(OrtKernelContext* context, size_t index, Tensor* out) {
  const OrtValue* value = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(kKernelContextGetInput)(
      context, index, &value));
  if (!value) return nullptr;  // an absent optional input: no dims, no data
  OrtTensorTypeAndShapeInfo* info = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(kGetTensorTypeAndShape)(value, &info));
  size_t rank = 0;
  OrtStatus* status = slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(kGetDimensionsCount)(info, &rank);
  if (!status && rank > 4) status = error("kernels", "an input of rank " + std::to_string(rank) + ": expected <= 4");
  if (!status) {
    out->dims.rank = rank;
    status = slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(kGetDimensions)(
        info, out->dims.d, rank);
  }
  slot<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(info);
  if (status) return status;
  return slot<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(const_cast<OrtValue*>(value), &out->data);
}

// Output `index` of shape dims [rank], allocated (or the buffer bound to it) -> its fp32 data.
OrtStatus* output(OrtKernelContext* context, size_t index, const int64_t* dims, size_t rank, float** data) {
  OrtValue* value = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
      kKernelContextGetOutput)(context, index, dims, rank, &value));
  void* raw = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(value, &raw));
  *data = static_cast<float*>(raw);
  return nullptr;
}

OrtStatus* output_count(OrtKernelContext* context, size_t* count) {
  return slot<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(kKernelContextGetOutputCount)(context, count);
}

std::string shape(const Dims& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

struct Kernel {
  std::vector<int64_t> widths;
  MixtureShape shape{};  // what the attributes fix (widths, N, tiles, h_offset, block, sums_offset)
};

OrtStatus* attribute(const OrtKernelInfo* info, const char* name, int64_t* out) {
  return slot<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*)>(kKernelInfoGetAttributeInt64)(info, name,
                                                                                                           out);
}

// The Mixture's attributes into `kernel` (where it stays: shape.widths points into its widths).
OrtStatus* mixture_attributes(const OrtKernelInfo* info, Kernel* kernel) {
  MixtureShape& s = kernel->shape;
  OrtStatus* status = attribute(info, "h_offset", &s.h_offset);
  if (!status) status = attribute(info, "block_size", &s.block);
  int64_t modules = 0;
  if (!status) status = attribute(info, "modules", &modules);
  for (int64_t i = 0; !status && i < modules; ++i) {
    int64_t width = 0;
    status = attribute(info, ("width_" + std::to_string(i)).c_str(), &width);
    kernel->widths.push_back(width);
  }
  if (!status) {
    if (OrtStatus* absent = attribute(info, "sums_offset", &s.sums_offset)) {  // no block offsets
      release(absent);
      s.sums_offset = -1;
    }
  }
  if (!status && (modules < 1 || modules > kMaxModules || s.block < 1 || s.h_offset < 0))
    status = error("attributes need 1 <= modules <= " + std::to_string(kMaxModules) +
                   ", block_size >= 1, h_offset >= 0");
  if (status) return status;
  s.widths = kernel->widths.data();  // the vector is not resized again
  s.modules = modules;
  s.n = s.padded = 0;
  for (int64_t w : kernel->widths) s.n += w, s.padded += tiles(w) * kTile;
  return nullptr;
}

OrtStatus* create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  auto* kernel = new (std::nothrow) Kernel();
  if (!kernel) return error("out of memory");
  if (OrtStatus* status = mixture_attributes(info, kernel)) {
    delete kernel;
    return status;
  }
  *out = kernel;
  return nullptr;
}

// The Mixture on its inputs t = Y, F, router_mix, levels, scales, zeros, offsets (absent: no data), into the
// context's outputs but its last `others`, or (`into` given) into one [rows, N] buffer.
OrtStatus* mixture_compute(const Kernel& k, OrtKernelContext* context, const Tensor* t, size_t others = 0,
                           float* into = nullptr) {
  const Tensor &y = t[0], &f = t[1], &mix = t[2], &levels = t[3], &scales = t[4], &zeros = t[5], &offsets = t[6];
  MixtureShape s = k.shape;
  const int64_t n = s.n, m = s.modules, tile_count = s.padded / kTile;
  if (y.dims.size() != 3 || f.dims.size() != 3 || y.dims[0] != f.dims[0] || y.dims[1] != f.dims[1] || y.dims[2] < n)
    return error("Y " + shape(y.dims) + " and F " + shape(f.dims) + ": expected [B,T,>=" + std::to_string(n) +
                 "] and [B,T,*]");
  if (mix.dims.size() != 2 || mix.dims[0] != f.dims[0] || mix.dims[1] < 1)
    return error("router_mix " + shape(mix.dims) + ": expected [" + std::to_string(f.dims[0]) + ",K]");
  if (levels.dims.size() != 3 || levels.dims[0] != tile_count || levels.dims[1] < 1 || levels.dims[2] != kTile)
    return error("levels " + shape(levels.dims) + ": expected [" + std::to_string(tile_count) + ",E*r," +
                 std::to_string(kTile) + "]");
  s.rows = f.dims[0] * f.dims[1];
  s.steps = f.dims[1];
  s.y_stride = y.dims[2];
  s.f_stride = f.dims[2];
  s.routers = mix.dims[1];
  const int64_t er = levels.dims[1], logits = s.f_stride - s.h_offset - m * er;
  const int64_t blocks = (er + s.block - 1) / s.block;
  if (logits <= 0 || logits % (m * s.routers) != 0)
    return error("F " + shape(f.dims) + " holds no m*K*E router logits after column " +
                 std::to_string(s.h_offset + m * er));
  s.experts = logits / (m * s.routers);
  if (er % s.experts != 0 || s.experts > kMaxExperts || er > kMaxRows)
    return error(std::to_string(s.experts) + " experts do not divide the " + std::to_string(er) + " lora_B rows (or "
                 "exceed " + std::to_string(kMaxExperts) + " experts, " + std::to_string(kMaxRows) + " rows)");
  s.rank = er / s.experts;
  for (const Tensor* g : {&scales, &zeros})
    if (g->dims.size() != 2 || g->dims[0] != blocks || g->dims[1] != tile_count * kTile)
      return error("scales/zeros " + shape(g->dims) + ": expected [" + std::to_string(blocks) + "," +
                   std::to_string(tile_count * kTile) + "]");
  if (offsets.data) {
    if (offsets.dims.size() != 2 || offsets.dims[1] != n || s.sums_offset < 0 ||
        s.sums_offset + offsets.dims[0] > s.h_offset)
      return error("offsets " + shape(offsets.dims) + " with sums_offset " + std::to_string(s.sums_offset) +
                   ": expected [k_blocks," + std::to_string(n) + "] and F's x·S columns before h_offset");
    s.sums = offsets.dims[0];
  }
  // Outputs: Z [B,T,N] (one, or `into`), or one [B,T,w_i] per module (m).
  size_t outputs = 1;
  Output z[kMaxModules];
  z[0] = {into, n};
  if (!into) {
    HOE_TRY(output_count(context, &outputs));
    outputs = outputs > others ? outputs - others : 0;
    if (outputs != 1 && outputs != static_cast<size_t>(m))
      return error(std::to_string(outputs) + " outputs: expected 1 (all modules) or " + std::to_string(m));
  }
  for (size_t o = 0; !into && o < outputs; ++o) {
    const int64_t width = outputs == 1 ? n : k.widths[o];
    const int64_t dims[3] = {f.dims[0], f.dims[1], width};
    float* data = nullptr;
    HOE_TRY(output(context, o, dims, 3, &data));
    z[o] = {data, width};
  }
  for (int64_t i = 1; outputs == 1 && i < m; ++i) z[i] = {z[i - 1].data + k.widths[i - 1], n};
  if (s.rows == 0) return nullptr;
  mixture(s, static_cast<const float*>(y.data), static_cast<const float*>(f.data),
          static_cast<const float*>(mix.data), static_cast<const uint8_t*>(levels.data),
          static_cast<const float*>(scales.data), static_cast<const float*>(zeros.data),
          static_cast<const float*>(offsets.data), z);
  return nullptr;
}

// The context's first `count` inputs into t (those past its inputs stay absent).
OrtStatus* read_inputs(OrtKernelContext* context, size_t count, Tensor* t) {
  size_t given = 0;
  HOE_TRY(slot<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(kKernelContextGetInputCount)(context, &given));
  for (size_t i = 0; i < std::min(count, given); ++i) HOE_TRY(read(context, i, &t[i]));
  return nullptr;
}

OrtStatus* compute(void* opaque, OrtKernelContext* context) {
  Tensor t[7];
  HOE_TRY(read_inputs(context, 7, t));
  return mixture_compute(*static_cast<Kernel*>(opaque), context, t);
}

// -- the OrtCustomOp table
const char* name(const OrtCustomOp*) { return "Mixture"; }
const char* provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
OrtElementType input_type(const OrtCustomOp*, size_t i) { return i == 3 ? kTypeUint8 : kTypeFloat; }
size_t input_count(const OrtCustomOp*) { return 7; }
OrtElementType output_type(const OrtCustomOp*, size_t) { return kTypeFloat; }
size_t one_output(const OrtCustomOp*) { return 1; }
void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
OrtCharacteristic input_characteristic(const OrtCustomOp*, size_t i) { return i == 6 ? kOptional : kRequired; }
OrtCharacteristic variadic(const OrtCustomOp*, size_t) { return kVariadic; }
int default_memory(const OrtCustomOp*, size_t) { return 0; }
int one(const OrtCustomOp*) { return 1; }
int zero(const OrtCustomOp*) { return 0; }

// What every op's table holds: the API version, the CPU provider, inputs in CPU memory, variadic arities of 1.
OrtCustomOp base_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kApiVersion;
  op.GetExecutionProviderType = provider;
  op.GetInputMemoryType = default_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = zero;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = one;
  return op;
}

OrtCustomOp make_op() {
  OrtCustomOp op = base_op();
  op.GetName = name;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = one_output;
  op.KernelDestroy = destroy;
  op.GetInputCharacteristic = input_characteristic;
  op.GetOutputCharacteristic = variadic;
  op.CreateKernelV2 = create;
  op.KernelComputeV2 = compute;
  return op;
}

const OrtCustomOp kMixture = make_op();

// -- Attention
struct AttentionKernel {
  int64_t heads = 0, kv_heads = 0;
  float scale = 0.0f;
  bool int8_cache = false;
};

extern const OrtCustomOp kAttentionInt8;

OrtStatus* attention_error(const std::string& message) { return error("Attention", message); }

OrtStatus* attention_create(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** out) {
  AttentionKernel k;
  k.int8_cache = op == &kAttentionInt8;
  HOE_TRY(attribute(info, "num_heads", &k.heads));
  HOE_TRY(attribute(info, "kv_num_heads", &k.kv_heads));
  HOE_TRY(slot<OrtStatus* (*)(const OrtKernelInfo*, const char*, float*)>(kKernelInfoGetAttributeFloat)(info, "scale",
                                                                                                         &k.scale));
  if (k.heads < 1 || k.kv_heads < 1 || k.heads % k.kv_heads != 0)
    return attention_error("num_heads " + std::to_string(k.heads) + ", kv_num_heads " + std::to_string(k.kv_heads) +
                           ": expected kv_num_heads >= 1 dividing num_heads");
  auto* kernel = new (std::nothrow) AttentionKernel(k);
  if (!kernel) return attention_error("out of memory");
  *out = kernel;
  return nullptr;
}

// The tasks on the session's intra-op threads (one thread: in order, on this one).
void parallel_for(void* context, void (*fn)(void*, size_t), size_t total, void* data) {
  using ParallelFor = OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*);
  if (OrtStatus* status = slot<ParallelFor>(kKernelContextParallelFor)(static_cast<const OrtKernelContext*>(context),
                                                                       fn, total, 0, data)) {
    release(status);  // the tasks only write their own rows: running them all here is safe
    for (size_t i = 0; i < total; ++i) fn(data, i);
  }
}

// The optional position_ids [B,T] int64, cos and sin [max_pos, D/2] (all three or none) -> rotary (attention.h).
OrtStatus* rotary_inputs(const Tensor* t, int64_t b, int64_t steps, int64_t d, Rotary* rotary) {
  const Tensor &positions = t[0], &cos = t[1], &sin = t[2];
  const auto given = [](const Tensor& x) { return x.data || x.dims.size() > 0; };  // absent: no dims, no data
  if (!given(positions) && !given(cos) && !given(sin)) return nullptr;
  if (!given(positions) || !given(cos) || !given(sin))
    return attention_error("position_ids, cos and sin: expected all three (rotary inside the op) or none");
  if (positions.dims.size() != 2 || positions.dims[0] != b || positions.dims[1] != steps)
    return attention_error("position_ids " + shape(positions.dims) + ": expected [" + std::to_string(b) + "," +
                           std::to_string(steps) + "]");
  if (cos.dims.size() != 2 || cos.dims[1] != d / 2 || d % 2 != 0 || sin.dims.size() != 2 ||
      sin.dims[0] != cos.dims[0] || sin.dims[1] != cos.dims[1])
    return attention_error("cos " + shape(cos.dims) + ", sin " + shape(sin.dims) + ": expected both [max_pos," +
                           std::to_string(d / 2) + "] (D/2, D = " + std::to_string(d) + ")");
  const auto* p = static_cast<const int64_t*>(positions.data);
  for (int64_t i = 0; i < b * steps; ++i)
    if (p[i] < 0 || p[i] >= cos.dims[0])
      return attention_error("position_ids holds " + std::to_string(p[i]) + ": expected 0 <= position < " +
                             std::to_string(cos.dims[0]) + " (the rows of cos/sin)");
  *rotary = {p, static_cast<const float*>(cos.data), static_cast<const float*>(sin.data)};
  return nullptr;
}

OrtStatus* attention_compute(void* opaque, OrtKernelContext* context) {
  const AttentionKernel& k = *static_cast<AttentionKernel*>(opaque);
  Tensor t[9];
  HOE_TRY(read_inputs(context, 9, t));
  const Tensor &q = t[0], &key = t[1], &value = t[2], &past_k = t[3], &past_v = t[4], &bias = t[5];
  if (past_k.dims.size() != 4 || past_k.dims[1] != k.kv_heads || past_v.dims.size() != 4)
    return attention_error("past_key " + shape(past_k.dims) + ": expected [B," + std::to_string(k.kv_heads) +
                           ",capacity,D]");
  for (size_t i = 0; i < 4; ++i)
    if (past_v.dims[i] != past_k.dims[i])
      return attention_error("past_value " + shape(past_v.dims) + ": expected the past_key's " + shape(past_k.dims));
  const int64_t b = past_k.dims[0], d = past_k.dims[3] - (k.int8_cache ? kScaleBytes : 0), capacity = past_k.dims[2];
  if (d < 1)
    return attention_error("past_key " + shape(past_k.dims) + ": expected rows of D int8 values and their " +
                           std::to_string(kScaleBytes) + "-byte scale");
  if (q.dims.size() != 3 || q.dims[0] != b || q.dims[2] != k.heads * d)
    return attention_error("q " + shape(q.dims) + ": expected [" + std::to_string(b) + ",T," +
                           std::to_string(k.heads * d) + "]");
  const int64_t steps = q.dims[1];
  for (const Tensor* kv : {&key, &value})
    if (kv->dims.size() != 3 || kv->dims[0] != b || kv->dims[1] != steps || kv->dims[2] != k.kv_heads * d)
      return attention_error("k/v " + shape(kv->dims) + ": expected [" + std::to_string(b) + "," +
                             std::to_string(steps) + "," + std::to_string(k.kv_heads * d) + "]");
  if (bias.dims.size() != 4 || bias.dims[0] != b || bias.dims[1] != 1 || bias.dims[2] != steps ||
      bias.dims[3] < steps || bias.dims[3] - steps > capacity)
    return attention_error("bias " + shape(bias.dims) + ": expected [" + std::to_string(b) + ",1," +
                           std::to_string(steps) + ",S] with T <= S <= T + " + std::to_string(capacity) +
                           " (the past's capacity)");
  Rotary rotary;
  HOE_TRY(rotary_inputs(t + 6, b, steps, d, &rotary));
  const int64_t total = bias.dims[3], present = std::max(capacity, total);
  const int64_t out_dims[3] = {b, steps, k.heads * d}, cache_dims[4] = {b, k.kv_heads, present, past_k.dims[3]};
  float *out = nullptr, *present_k = nullptr, *present_v = nullptr;  // an int8 cache's: its bytes
  HOE_TRY(output(context, 0, out_dims, 3, &out));
  HOE_TRY(output(context, 1, cache_dims, 4, &present_k));
  HOE_TRY(output(context, 2, cache_dims, 4, &present_v));
  if (b == 0 || steps == 0) return nullptr;
  const AttentionShape s{b, steps, k.heads, k.kv_heads, d, total, capacity, present, k.scale, k.int8_cache};
  Parallel parallel;
  if (g_parallel) parallel = {context, parallel_for};
  attention(s, static_cast<const float*>(q.data), static_cast<const float*>(key.data),
            static_cast<const float*>(value.data), static_cast<const float*>(bias.data), past_k.data, past_v.data,
            present_k, present_v, out, parallel, rotary);
  return nullptr;
}

const char* attention_name(const OrtCustomOp*) { return "Attention"; }
const char* attention_int8_name(const OrtCustomOp*) { return "AttentionInt8"; }
OrtElementType float_type(const OrtCustomOp*, size_t) { return kTypeFloat; }
OrtElementType attention_input(const OrtCustomOp*, size_t i) { return i == 6 ? kTypeInt64 : kTypeFloat; }
OrtElementType int8_cache_input(const OrtCustomOp* op, size_t i) {
  return i == 3 || i == 4 ? kTypeInt8 : attention_input(op, i);
}
OrtElementType int8_cache_output(const OrtCustomOp*, size_t i) { return i == 0 ? kTypeFloat : kTypeInt8; }
size_t nine(const OrtCustomOp*) { return 9; }
size_t three(const OrtCustomOp*) { return 3; }
void attention_destroy(void* kernel) { delete static_cast<AttentionKernel*>(kernel); }
OrtCharacteristic required(const OrtCustomOp*, size_t) { return kRequired; }
OrtCharacteristic rotary_optional(const OrtCustomOp*, size_t i) { return i >= 6 ? kOptional : kRequired; }

OrtCustomOp make_attention() {
  OrtCustomOp op = base_op();
  op.GetName = attention_name;
  op.GetInputType = attention_input;
  op.GetInputTypeCount = nine;
  op.GetOutputType = float_type;
  op.GetOutputTypeCount = three;
  op.KernelDestroy = attention_destroy;
  op.GetInputCharacteristic = rotary_optional;
  op.GetOutputCharacteristic = required;
  op.CreateKernelV2 = attention_create;
  op.KernelComputeV2 = attention_compute;
  return op;
}

const OrtCustomOp kAttention = make_attention();

OrtCustomOp make_attention_int8() {
  OrtCustomOp op = make_attention();
  op.GetName = attention_int8_name;
  op.GetInputType = int8_cache_input;
  op.GetOutputType = int8_cache_output;
  return op;
}

const OrtCustomOp kAttentionInt8 = make_attention_int8();

// -- MatMulInt4
struct Norm {  // the norm prologue's attribute (MatMulInt4 and MatMulInt4Mixture)
  bool epsilon_given = false;
  float epsilon = 0.0f;
};

struct LinearKernel {
  int64_t k = 0, n = 0;
  bool exact = false;
  Norm norm;
  bool swiglu = false;  // the SwiGLU epilogue (activation.h)
};

// K, N (both >= 1) and, for the products, accuracy_level, epsilon and swiglu: the attributes the ops on the tiles
// share.
OrtStatus* tiles_attributes(const OrtKernelInfo* info, const char* op, bool levels, LinearKernel* k) {
  int64_t level = 0, swiglu = 0;
  HOE_TRY(attribute(info, "K", &k->k));
  HOE_TRY(attribute(info, "N", &k->n));
  if (levels) {
    HOE_TRY(attribute(info, "accuracy_level", &level));
    if (OrtStatus* absent = slot<OrtStatus* (*)(const OrtKernelInfo*, const char*, float*)>(
            kKernelInfoGetAttributeFloat)(info, "epsilon", &k->norm.epsilon))
      release(absent);  // no prologue unless a gamma input comes with it
    else
      k->norm.epsilon_given = true;
    if (OrtStatus* absent = attribute(info, "swiglu", &swiglu)) release(absent);  // no epilogue
  }
  if (k->k < 1 || k->n < 1)
    return error(op, "K " + std::to_string(k->k) + ", N " + std::to_string(k->n) + ": expected both >= 1");
  if (swiglu != 0 && swiglu != 1) return error(op, "swiglu " + std::to_string(swiglu) + ": expected 0 or 1");
  k->swiglu = swiglu == 1;
  k->exact = level == 0;
  return nullptr;
}

OrtStatus* tiles_create(const OrtKernelInfo* info, const char* op, bool levels, void** out) {
  LinearKernel k;
  HOE_TRY(tiles_attributes(info, op, levels, &k));
  auto* kernel = new (std::nothrow) LinearKernel(k);
  if (!kernel) return error(op, "out of memory");
  *out = kernel;
  return nullptr;
}

// packed must be [groups, parts, kLinearStride] for K and N (linear.h).
OrtStatus* check_tiles(const char* op, const LinearKernel& k, const Tensor& packed) {
  const int64_t groups = linear_groups(k.n), parts = linear_parts(k.k);
  if (packed.dims.size() == 3 && packed.dims[0] == groups && packed.dims[1] == parts &&
      packed.dims[2] == kLinearStride)
    return nullptr;
  return error(op, "packed " + shape(packed.dims) + ": expected [" + std::to_string(groups) + "," +
                       std::to_string(parts) + "," + std::to_string(kLinearStride) + "]");
}

constexpr size_t kMaxRank = 8;  // of the outputs of the ops on the tiles
constexpr size_t kKeptScratch = size_t{1} << 20;  // floats of scratch a thread keeps between calls (4 MB)

// t = x, packed, bias (absent: no data) checked for the product; y's shape [..., N] into dims, its rows (all but
// the last dim multiplied) into rows.
OrtStatus* check_product(const char* op, const LinearKernel& k, const Tensor* t, int64_t* dims, int64_t* rows) {
  const Tensor &x = t[0], &packed = t[1], &bias = t[2];
  if (bias.data && (bias.dims.size() != 1 || bias.dims[0] != k.n))
    return error(op, "bias " + shape(bias.dims) + ": expected [" + std::to_string(k.n) + "]");
  if (x.dims.size() < 1 || x.dims.size() > kMaxRank || x.dims[x.dims.size() - 1] != k.k)
    return error(op, "x " + shape(x.dims) + ": expected [...," + std::to_string(k.k) + "] of at most " +
                         std::to_string(kMaxRank) + " dims");
  HOE_TRY(check_tiles(op, k, packed));
  *rows = 1;
  for (size_t i = 0; i + 1 < x.dims.size(); ++i) *rows *= dims[i] = x.dims[i];
  dims[x.dims.size() - 1] = k.n;
  return nullptr;
}

// y [rows, N] = x·W + bias on the tiles (t as check_product's).
void product(const LinearKernel& k, OrtKernelContext* context, const Tensor* t, int64_t rows, float* y) {
  Parallel parallel;
  if (g_parallel) parallel = {context, parallel_for};
  linear_int4({rows, k.k, k.n, k.exact}, static_cast<const float*>(t[0].data),
              static_cast<const uint8_t*>(t[1].data), static_cast<const float*>(t[2].data), y, parallel);
}

// -- the norm prologue (norm.h) of MatMulInt4 and MatMulInt4Mixture
bool same_dims(const Dims& a, const Dims& b) {
  return a.size() == b.size() && std::equal(a.d, a.d + a.size(), b.d);
}

constexpr size_t kNoOutput = ~size_t{0};

// Given gamma, x's rows normed (norm.h) into a scratch buffer per thread, which x then points at; given skip too,
// x + skip into output `sum_output` (kNoOutput: a scratch buffer). x's last dim is K (check_product).
OrtStatus* norm_prologue(const char* op, const Norm& norm, OrtKernelContext* context, const Tensor& skip,
                         const Tensor& gamma, size_t sum_output, Tensor* x) {
  if (!gamma.data) return skip.data ? error(op, "skip without gamma: expected gamma alone, or both") : nullptr;
  const int64_t k = x->dims[x->dims.size() - 1];
  if (!norm.epsilon_given) return error(op, "gamma without an epsilon attribute: expected both");
  if (gamma.dims.size() != 1 || gamma.dims[0] != k)
    return error(op, "gamma " + shape(gamma.dims) + ": expected [" + std::to_string(k) + "]");
  if (skip.data && !same_dims(skip.dims, x->dims))
    return error(op, "skip " + shape(skip.dims) + ": expected x's " + shape(x->dims));
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x->dims.size(); ++i) rows *= x->dims[i];
  // held until this thread's next prologue (a prompt's then shrunk): the normed rows, and x + skip where no
  // output takes it
  thread_local std::vector<float> normed, sums;
  const size_t need = static_cast<size_t>(rows * k);
  for (auto* v : {&normed, &sums})
    if (v->capacity() > kKeptScratch && need <= kKeptScratch) std::vector<float>().swap(*v);
  normed.resize(need);
  float* sum = nullptr;
  if (skip.data && sum_output != kNoOutput) {
    HOE_TRY(output(context, sum_output, x->dims.d, x->dims.size(), &sum));
  } else if (skip.data) {
    sums.resize(need);
    sum = sums.data();
  }
  rms_norm(static_cast<const float*>(x->data), static_cast<const float*>(skip.data),
           static_cast<const float*>(gamma.data), rows, k, norm.epsilon, sum, normed.data());
  x->data = normed.data();
  return nullptr;
}

OrtStatus* linear_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  HOE_TRY(tiles_create(info, "MatMulInt4", true, out));
  const LinearKernel& k = *static_cast<LinearKernel*>(*out);
  if (!k.swiglu || k.n % 2 == 0) return nullptr;
  const int64_t n = k.n;
  delete static_cast<LinearKernel*>(*out);
  return error("MatMulInt4", "swiglu with N " + std::to_string(n) + ": expected an even N ([gate | up])");
}

// A thread's scratch vector grown to `count` floats -> its data; trim() frees a prompt's after the call.
float* scratch_floats(std::vector<float>& v, size_t count) {
  v.resize(count);
  return v.data();
}

void trim(std::vector<float>& v) {
  if (v.capacity() > kKeptScratch) std::vector<float>().swap(v);
}

OrtStatus* linear_compute(void* opaque, OrtKernelContext* context) {
  const LinearKernel& k = *static_cast<LinearKernel*>(opaque);
  Tensor t[5];  // x, packed, bias, skip, gamma
  HOE_TRY(read_inputs(context, 5, t));
  int64_t dims[kMaxRank], rows = 0;
  HOE_TRY(check_product("MatMulInt4", k, t, dims, &rows));
  size_t outputs = 0;
  if (t[3].data) HOE_TRY(output_count(context, &outputs));  // x + skip: optional output 1
  HOE_TRY(norm_prologue("MatMulInt4", k.norm, context, t[3], t[4], outputs > 1 ? 1 : kNoOutput, &t[0]));
  const size_t rank = t[0].dims.size();
  if (k.swiglu) dims[rank - 1] = k.n / 2;
  float* y = nullptr;
  HOE_TRY(output(context, 0, dims, rank, &y));
  if (!rows) return nullptr;
  if (!k.swiglu) {
    product(k, context, t, rows, y);
    return nullptr;
  }
  thread_local std::vector<float> gate_up;  // [rows, N] before the epilogue
  product(k, context, t, rows, scratch_floats(gate_up, static_cast<size_t>(rows * k.n)));
  swiglu(gate_up.data(), rows, k.n / 2, y);
  trim(gate_up);
  return nullptr;
}

const char* linear_name(const OrtCustomOp*) { return "MatMulInt4"; }
OrtElementType linear_input(const OrtCustomOp*, size_t i) { return i == 1 ? kTypeUint8 : kTypeFloat; }
size_t five_inputs(const OrtCustomOp*) { return 5; }
size_t two_outputs(const OrtCustomOp*) { return 2; }
OrtCharacteristic linear_optional(const OrtCustomOp*, size_t i) { return i >= 2 ? kOptional : kRequired; }
OrtCharacteristic sum_optional(const OrtCustomOp*, size_t i) { return i == 1 ? kOptional : kRequired; }
void linear_destroy(void* kernel) { delete static_cast<LinearKernel*>(kernel); }

OrtCustomOp make_linear() {
  OrtCustomOp op = base_op();
  op.GetName = linear_name;
  op.GetInputType = linear_input;
  op.GetInputTypeCount = five_inputs;
  op.GetOutputType = float_type;
  op.GetOutputTypeCount = two_outputs;
  op.KernelDestroy = linear_destroy;
  op.GetInputCharacteristic = linear_optional;
  op.GetOutputCharacteristic = sum_optional;
  op.CreateKernelV2 = linear_create;
  op.KernelComputeV2 = linear_compute;
  return op;
}

const OrtCustomOp kLinear = make_linear();

// -- GatherInt4
OrtStatus* gather_error(const std::string& message) { return error("GatherInt4", message); }

OrtStatus* gather_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  return tiles_create(info, "GatherInt4", false, out);
}

OrtStatus* gather_compute(void* opaque, OrtKernelContext* context) {
  const LinearKernel& k = *static_cast<LinearKernel*>(opaque);
  Tensor packed, ids;
  HOE_TRY(read(context, 0, &packed));
  HOE_TRY(read(context, 1, &ids));
  HOE_TRY(check_tiles("GatherInt4", k, packed));
  if (ids.dims.size() + 1 > kMaxRank)
    return gather_error("ids " + shape(ids.dims) + ": expected at most " + std::to_string(kMaxRank - 1) + " dims");
  int64_t dims[kMaxRank], count = 1;
  for (size_t i = 0; i < ids.dims.size(); ++i) count *= dims[i] = ids.dims[i];
  dims[ids.dims.size()] = k.k;
  const auto* id = static_cast<const int64_t*>(ids.data);
  for (int64_t i = 0; i < count; ++i)
    if (id[i] < 0 || id[i] >= k.n)
      return gather_error("id " + std::to_string(id[i]) + ": expected 0 <= id < " + std::to_string(k.n));
  float* y = nullptr;
  HOE_TRY(output(context, 0, dims, ids.dims.size() + 1, &y));
  if (count) linear_columns(static_cast<const uint8_t*>(packed.data), k.k, id, count, y);
  return nullptr;
}

const char* gather_name(const OrtCustomOp*) { return "GatherInt4"; }
OrtElementType gather_input(const OrtCustomOp*, size_t i) { return i == 0 ? kTypeUint8 : kTypeInt64; }
size_t two_inputs(const OrtCustomOp*) { return 2; }

OrtCustomOp make_gather() {
  OrtCustomOp op = base_op();
  op.GetName = gather_name;
  op.GetInputType = gather_input;
  op.GetInputTypeCount = two_inputs;
  op.GetOutputType = float_type;
  op.GetOutputTypeCount = one_output;
  op.KernelDestroy = linear_destroy;
  op.GetInputCharacteristic = required;
  op.GetOutputCharacteristic = required;
  op.CreateKernelV2 = gather_create;
  op.KernelComputeV2 = gather_compute;
  return op;
}

const OrtCustomOp kGather = make_gather();

// -- MatMulInt4Mixture: MatMulInt4, then the Mixture on its output (Y = F), with no tensor between them

struct FusedKernel {
  LinearKernel linear;
  Kernel mixture;
};

OrtStatus* fused_create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  auto* kernel = new (std::nothrow) FusedKernel();
  if (!kernel) return error("MatMulInt4Mixture", "out of memory");
  OrtStatus* status = tiles_attributes(info, "MatMulInt4Mixture", true, &kernel->linear);
  if (!status) status = mixture_attributes(info, &kernel->mixture);
  const std::vector<int64_t>& widths = kernel->mixture.widths;
  if (!status && kernel->linear.swiglu && (widths.size() != 2 || widths[0] != widths[1]))
    status = error("MatMulInt4Mixture", "swiglu with " + std::to_string(widths.size()) + " modules of widths " +
                                            std::to_string(widths[0]) + ", ...: expected 2 of one width (gate, up)");
  if (status) {
    delete kernel;
    return status;
  }
  *out = kernel;
  return nullptr;
}

OrtStatus* fused_compute(void* opaque, OrtKernelContext* context) {
  const FusedKernel& k = *static_cast<FusedKernel*>(opaque);
  // t: x, packed, bias, then the Mixture's from router_mix, then skip and gamma; m: Y, F, router_mix, ..., offsets
  Tensor t[10], m[7];
  HOE_TRY(read_inputs(context, 10, t));
  std::copy(t + 3, t + 8, m + 2);
  int64_t dims[kMaxRank], rows = 0;
  HOE_TRY(check_product("MatMulInt4Mixture", k.linear, t, dims, &rows));
  if (t[0].dims.size() != 3) return error("MatMulInt4Mixture", "x " + shape(t[0].dims) + ": expected [B,T,K]");
  size_t outputs = 0;
  HOE_TRY(output_count(context, &outputs));
  const size_t sums = t[8].data ? 1 : 0;  // x + skip: the last output
  if (outputs <= sums)
    return error("MatMulInt4Mixture", "with skip, the outputs end with x + skip: expected 2 or more");
  if (k.linear.swiglu && outputs != 1 + sums)
    return error("MatMulInt4Mixture", std::to_string(outputs) + " outputs with swiglu: expected " +
                                          std::to_string(1 + sums) + " (silu(gate)·up" + (sums ? ", x + skip)" : ")"));
  HOE_TRY(norm_prologue("MatMulInt4Mixture", k.linear.norm, context, t[8], t[9], outputs - 1, &t[0]));
  // this thread's F [B,T,N] and, with the epilogue, Z [B,T,2W] of its last call, reused (a prompt's not held)
  thread_local std::vector<float> scratch, gate_up;
  m[0].dims.rank = 3;
  for (size_t i = 0; i < 3; ++i) m[0].dims.d[i] = dims[i];
  m[0].data = scratch_floats(scratch, static_cast<size_t>(rows * k.linear.n));
  m[1] = m[0];
  if (rows) product(k.linear, context, t, rows, scratch.data());
  const int64_t width = k.mixture.shape.n / 2;
  float* z = k.linear.swiglu ? scratch_floats(gate_up, static_cast<size_t>(rows * 2 * width)) : nullptr;
  OrtStatus* status = mixture_compute(k.mixture, context, m, sums, z);
  if (!status && z) {
    const int64_t out_dims[3] = {dims[0], dims[1], width};
    float* out = nullptr;
    status = output(context, 0, out_dims, 3, &out);
    if (!status && rows) swiglu(z, rows, width, out);
  }
  trim(scratch);
  trim(gate_up);
  return status;
}

const char* fused_name(const OrtCustomOp*) { return "MatMulInt4Mixture"; }
OrtElementType fused_input(const OrtCustomOp*, size_t i) { return i == 1 || i == 4 ? kTypeUint8 : kTypeFloat; }
size_t ten_inputs(const OrtCustomOp*) { return 10; }
OrtCharacteristic fused_optional(const OrtCustomOp*, size_t i) { return i >= 7 ? kOptional : kRequired; }
void fused_destroy(void* kernel) { delete static_cast<FusedKernel*>(kernel); }

OrtCustomOp make_fused() {
  OrtCustomOp op = base_op();
  op.GetName = fused_name;
  op.GetInputType = fused_input;
  op.GetInputTypeCount = ten_inputs;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = one_output;
  op.KernelDestroy = fused_destroy;
  op.GetInputCharacteristic = fused_optional;
  op.GetOutputCharacteristic = variadic;
  op.CreateKernelV2 = fused_create;
  op.KernelComputeV2 = fused_compute;
  return op;
}

const OrtCustomOp kFused = make_fused();

}  // namespace
}  // namespace hoe::ort

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                              const OrtApiBase* base) {
  using namespace hoe::ort;
  g_api = base->GetApi(kApiVersion);
  if (!g_api) return nullptr;  // an onnxruntime older than 1.16: nothing to register with (it then reports the op)
  g_parallel = base->GetApi(kParallelForApiVersion) != nullptr;
  // A domain per session options, kept for the life of the process: sessions point at it.
  static std::mutex lock;
  static std::vector<OrtCustomOpDomain*> domains;
  std::lock_guard<std::mutex> hold(lock);
  OrtCustomOpDomain* domain = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)("hoe.ort", &domain));
  domains.push_back(domain);
  for (const OrtCustomOp* op : {&kMixture, &kAttention, &kAttentionInt8, &kLinear, &kGather, &kFused})
    HOE_TRY(slot<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomainAdd)(domain, op));
  return slot<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(options, domain);
}
