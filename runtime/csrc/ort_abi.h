// The few pieces of onnxruntime's C ABI hoe's kernels use, declared here: the onnxruntime wheel ships no
// headers. Facts from onnxruntime's public C API (include/onnxruntime/core/session/onnxruntime_c_api.h):
// - OrtApiBase::GetApi(version) returns the table of function pointers `OrtApi` of that API version; the
//   table only ever grows at its end, so a slot index stays valid for every later onnxruntime.
// - A custom-op library exports `OrtStatus* RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*)`.
// - OrtCustomOp is read up to the fields its `version` has (CreateKernelV2/KernelComputeV2 from version 16).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

struct OrtStatus;
struct OrtApi;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtCustomOpDomain;
struct OrtSessionOptions;
struct OrtShapeInferContext;

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

enum OrtElementType : int { kTypeUndefined = 0, kTypeFloat = 1, kTypeUint8 = 2, kTypeInt8 = 3, kTypeInt64 = 7 };
enum OrtCharacteristic : int { kRequired = 0, kOptional = 1, kVariadic = 2 };
enum OrtErrorCodeValue : int { kOk = 0, kFail = 1, kInvalidArgument = 2 };

struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  OrtElementType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  OrtElementType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  OrtCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);
  OrtCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);
  int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);  // OrtMemType; 0 = default (CPU)
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* context);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
};

}  // extern "C"

namespace hoe::ort {

constexpr uint32_t kApiVersion = 16;  // onnxruntime >= 1.16: KernelComputeV2

// Slots of OrtApi used here, with their signatures.
enum Slot : size_t {
  kCreateStatus = 0,                    // OrtStatus* (int code, const char* msg)
  kCreateCustomOpDomain = 26,           // OrtStatus* (const char* domain, OrtCustomOpDomain** out)
  kCustomOpDomainAdd = 27,              // OrtStatus* (OrtCustomOpDomain*, const OrtCustomOp*)
  kAddCustomOpDomain = 28,              // OrtStatus* (OrtSessionOptions*, OrtCustomOpDomain*)
  kGetTensorMutableData = 51,           // OrtStatus* (OrtValue*, void** out)
  kGetDimensionsCount = 61,             // OrtStatus* (const OrtTensorTypeAndShapeInfo*, size_t* out)
  kGetDimensions = 62,                  // OrtStatus* (const OrtTensorTypeAndShapeInfo*, int64_t* dims, size_t n)
  kGetTensorTypeAndShape = 65,          // OrtStatus* (const OrtValue*, OrtTensorTypeAndShapeInfo** out)
  kKernelInfoGetAttributeFloat = 85,    // OrtStatus* (const OrtKernelInfo*, const char* name, float* out)
  kKernelInfoGetAttributeInt64 = 86,    // OrtStatus* (const OrtKernelInfo*, const char* name, int64_t* out)
  kKernelContextGetInputCount = 88,     // OrtStatus* (const OrtKernelContext*, size_t* out)
  kKernelContextGetOutputCount = 89,    // OrtStatus* (const OrtKernelContext*, size_t* out)
  kKernelContextGetInput = 90,          // OrtStatus* (const OrtKernelContext*, size_t i, const OrtValue** out)
  kKernelContextGetOutput = 91,         // OrtStatus* (OrtKernelContext*, size_t i, const int64_t* dims, size_t n,
                                        //             OrtValue** out)
  kReleaseStatus = 93,                  // void (OrtStatus*)
  kReleaseTensorTypeAndShapeInfo = 99,  // void (OrtTensorTypeAndShapeInfo*)
  kKernelContextParallelFor = 274,      // OrtStatus* (const OrtKernelContext*, void (*fn)(void*, size_t),
                                        //             size_t total, size_t num_batch, void* data)
};

constexpr uint32_t kParallelForApiVersion = 18;  // a table with KernelContext_ParallelFor (added in 1.17)

}  // namespace hoe::ort
