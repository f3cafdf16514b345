# libtorch: Debian's libtorch-dev (1.13, CPU) by default, or any CUDA libtorch 2.x found
# through CMAKE_PREFIX_PATH (for example the `torch` wheel's
# `python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'`).
# Version differences live in worker/model/torch_compat.h, nowhere else.
# CUDA >= 12.9 ships NVTX3 only (header-only) and no libnvToolsExt, which the cmake files
# of torch wheels up to 2.7 still name as CUDA::nvToolsExt; stand in an empty target.
if(CUDAToolkit_FOUND AND NOT TARGET CUDA::nvToolsExt)
  add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
endif()
# The GPU architectures torch's cmake adds nvcc flags for (rmgen's own kernels,
# worker/model/cuda): A100 and H100/H200. Its default list starts at sm_50, which CUDA 13's
# nvcc no longer supports.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
find_package(Torch REQUIRED)
message(STATUS "rmgen: libtorch ${Torch_VERSION} (${TORCH_INSTALL_PREFIX})")

# rmgen's own CUDA kernels (worker/model/cuda, nvcc) where libtorch has CUDA and the toolkit is
# present. CUDA is enabled here, at the top level, for every target that links them.
set(RMGEN_FUSED_KERNELS OFF)
if(RMGEN_HAVE_CUDA AND TORCH_CUDA_LIBRARIES)
  if(NOT CMAKE_CUDA_COMPILER AND CUDAToolkit_NVCC_EXECUTABLE)
    set(CMAKE_CUDA_COMPILER ${CUDAToolkit_NVCC_EXECUTABLE})
  endif()
  enable_language(CUDA)
  set(RMGEN_FUSED_KERNELS ON)
endif()
message(STATUS "rmgen: fused CUDA kernels: ${RMGEN_FUSED_KERNELS}")

add_library(rmgen_torch INTERFACE)
target_link_libraries(rmgen_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(rmgen_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
if(TORCH_CXX_FLAGS)
  separate_arguments(_rmgen_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
  target_compile_options(rmgen_torch INTERFACE ${_rmgen_torch_flags})
endif()

# Targets that include torch get its headers precompiled (a torch translation unit costs
# ~30 s without). Each such target compiles the PCH once; ccache keeps it across builds.
function(rmgen_torch_target target)
  target_link_libraries(${target} PUBLIC rmgen_torch)
  if(RMGEN_USE_PCH)
    target_precompile_headers(${target} PRIVATE <torch/torch.h>)
  endif()
endfunction()
