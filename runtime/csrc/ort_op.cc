// The Mixture op (domain hoe.ort) for onnxruntime's CPU provider: shapes checked, then mixture.cc computes.
//
//   inputs   Y [B,T,>=N] f32, F [B,T,h_offset + m·E·r + m·K·E] f32, router_mix [B,K] f32,
//            levels [tiles, E·r, 64] u8, scales and zeros [blocks, tiles·64] f32 (mixture.h), optional offsets
//            [k_blocks, N] f32
//   attrs    h_offset, block_size, modules m, width_0 .. width_{m-1} (N = their sum); with offsets sums_offset
//            (F's first x·S column)
//   outputs  Z [B,T,N] f32, or one [B,T,w_i] per module (variadic)
// E and r follow from the shapes: m·K·E logits after m·E·r lora_A columns, E·r rows of levels.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "mixture.h"
#include "ort_abi.h"

namespace hoe::ort {
namespace {

const OrtApi* g_api = nullptr;

template <typename Fn>
Fn slot(size_t index) {
  return reinterpret_cast<Fn>(reinterpret_cast<void* const*>(g_api)[index]);
}

OrtStatus* error(const std::string& message) {
  return slot<OrtStatus* (*)(int, const char*)>(kCreateStatus)(kInvalidArgument, ("hoe.ort.Mixture: " + message).c_str());
}

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
  if (!status && rank > 4) status = error("an input of rank " + std::to_string(rank) + ": expected <= 4");
  if (!status) {
    out->dims.rank = rank;
    status = slot<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(kGetDimensions)(
        info, out->dims.d, rank);
  }
  slot<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(info);
  if (status) return status;
  return slot<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(const_cast<OrtValue*>(value), &out->data);
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

OrtStatus* create(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  auto* kernel = new (std::nothrow) Kernel();
  if (!kernel) return error("out of memory");
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
  if (status) {
    delete kernel;
    return status;
  }
  s.widths = kernel->widths.data();  // the vector is not resized again
  s.modules = modules;
  s.n = s.padded = 0;
  for (int64_t w : kernel->widths) s.n += w, s.padded += tiles(w) * kTile;
  *out = kernel;
  return nullptr;
}

OrtStatus* compute(void* opaque, OrtKernelContext* context) {
  const Kernel& k = *static_cast<Kernel*>(opaque);
  size_t count = 0;
  HOE_TRY(slot<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(kKernelContextGetInputCount)(context, &count));
  Tensor t[7];
  for (size_t i = 0; i < std::min<size_t>(count, 7); ++i) HOE_TRY(read(context, i, &t[i]));
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
  // Outputs: Z [B,T,N] (one), or one [B,T,w_i] per module (m).
  size_t outputs = 0;
  HOE_TRY(slot<OrtStatus* (*)(const OrtKernelContext*, size_t*)>(kKernelContextGetOutputCount)(context, &outputs));
  if (outputs != 1 && outputs != static_cast<size_t>(m))
    return error(std::to_string(outputs) + " outputs: expected 1 (all modules) or " + std::to_string(m));
  Output z[kMaxModules];
  for (size_t o = 0; o < outputs; ++o) {
    const int64_t width = outputs == 1 ? n : k.widths[o];
    const int64_t dims[3] = {f.dims[0], f.dims[1], width};
    OrtValue* out = nullptr;
    HOE_TRY(slot<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
        kKernelContextGetOutput)(context, o, dims, 3, &out));
    void* data = nullptr;
    HOE_TRY(slot<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(out, &data));
    z[o] = {static_cast<float*>(data), width};
  }
  for (int64_t i = 1; outputs == 1 && i < m; ++i) z[i] = {z[i - 1].data + k.widths[i - 1], n};
  if (s.rows == 0) return nullptr;
  mixture(s, static_cast<const float*>(y.data), static_cast<const float*>(f.data),
          static_cast<const float*>(mix.data), static_cast<const uint8_t*>(levels.data),
          static_cast<const float*>(scales.data), static_cast<const float*>(zeros.data),
          static_cast<const float*>(offsets.data), z);
  return nullptr;
}

// -- the OrtCustomOp table
const char* name(const OrtCustomOp*) { return "Mixture"; }
const char* provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
OrtElementType input_type(const OrtCustomOp*, size_t i) { return i == 3 ? kTypeUint8 : kTypeFloat; }
size_t input_count(const OrtCustomOp*) { return 7; }
OrtElementType output_type(const OrtCustomOp*, size_t) { return kTypeFloat; }
size_t output_count(const OrtCustomOp*) { return 1; }
void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
OrtCharacteristic input_characteristic(const OrtCustomOp*, size_t i) { return i == 6 ? kOptional : kRequired; }
OrtCharacteristic variadic(const OrtCustomOp*, size_t) { return kVariadic; }
int default_memory(const OrtCustomOp*, size_t) { return 0; }
int one(const OrtCustomOp*) { return 1; }
int zero(const OrtCustomOp*) { return 0; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kApiVersion;
  op.GetName = name;
  op.GetExecutionProviderType = provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy;
  op.GetInputCharacteristic = input_characteristic;
  op.GetOutputCharacteristic = variadic;
  op.GetInputMemoryType = default_memory;
  op.GetVariadicInputMinArity = one;
  op.GetVariadicInputHomogeneity = zero;
  op.GetVariadicOutputMinArity = one;
  op.GetVariadicOutputHomogeneity = one;
  op.CreateKernelV2 = create;
  op.KernelComputeV2 = compute;
  return op;
}

const OrtCustomOp kMixture = make_op();

}  // namespace
}  // namespace hoe::ort

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                              const OrtApiBase* base) {
  using namespace hoe::ort;
  g_api = base->GetApi(kApiVersion);
  if (!g_api) return nullptr;  // an onnxruntime older than 1.16: nothing to register with (it then reports the op)
  // A domain per session options, kept for the life of the process: sessions point at it.
  static std::mutex lock;
  static std::vector<OrtCustomOpDomain*> domains;
  std::lock_guard<std::mutex> hold(lock);
  OrtCustomOpDomain* domain = nullptr;
  HOE_TRY(slot<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)("hoe.ort", &domain));
  domains.push_back(domain);
  HOE_TRY(slot<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomainAdd)(domain, &kMixture));
  return slot<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(options, domain);
}
