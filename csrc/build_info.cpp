// Build facts reported by clfast.info(); the values come from CMake (CMakeLists.txt). CLFAST_CUDA_ARCHS is
// comma-separated ("8.0,9.0"): clfast/_info.py's parse_archs splits it.
#ifndef CLFAST_WITH_CUDA
#define CLFAST_WITH_CUDA 0
#endif
#ifndef CLFAST_CUDA_ARCHS
#define CLFAST_CUDA_ARCHS ""
#endif
#ifndef CLFAST_CUDA_EMULATION
#define CLFAST_CUDA_EMULATION 0
#endif
#ifndef CLFAST_TORCH_VERSION
#define CLFAST_TORCH_VERSION "unknown"
#endif
#ifndef CLFAST_VERSION
#define CLFAST_VERSION "unknown"
#endif

#define CLFAST_STR2(x) #x
#define CLFAST_STR(x) CLFAST_STR2(x)

extern "C" const char* clfast_build_info() {
  return "version=" CLFAST_VERSION "\n"
         "torch=" CLFAST_TORCH_VERSION "\n"
         "cuda=" CLFAST_STR(CLFAST_WITH_CUDA) "\n"
         "cuda_archs=" CLFAST_CUDA_ARCHS "\n"
         "cuda_emulation=" CLFAST_STR(CLFAST_CUDA_EMULATION) "\n";
}
