# The cuda backend: host sources in src/cuda/*.c, kernels in kernels/cuda/ compiled at run time
# by NVRTC. The kernel sources (and the shared RNG header) are embedded as C strings generated
# here, so the library needs neither CUDA headers at build time nor files at run time.
file(GLOB FA_CUDA_HOST_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda/*.c)
file(GLOB FA_CUDA_KERNEL_FILES CONFIGURE_DEPENDS
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.cuh
  ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda/*.h)
list(SORT FA_CUDA_KERNEL_FILES)
list(APPEND FA_CUDA_KERNEL_FILES ${CMAKE_CURRENT_SOURCE_DIR}/src/core/fa_philox.h)

set(FA_CUDA_EMBEDDED ${CMAKE_CURRENT_BINARY_DIR}/fa_cuda_sources.c)
string(REPLACE ";" "|" _fa_cuda_files_arg "${FA_CUDA_KERNEL_FILES}") # | keeps the list one argument
add_custom_command(
  OUTPUT ${FA_CUDA_EMBEDDED}
  COMMAND ${CMAKE_COMMAND} -DOUTPUT=${FA_CUDA_EMBEDDED} "-DFILES=${_fa_cuda_files_arg}"
          -P ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda/embed.cmake
  DEPENDS ${FA_CUDA_KERNEL_FILES} ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda/embed.cmake
  COMMENT "Embedding the CUDA kernel sources"
  VERBATIM)

target_sources(fa_objects PRIVATE ${FA_CUDA_HOST_SOURCES} ${FA_CUDA_EMBEDDED})
target_include_directories(fa_objects PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/src/cuda ${CMAKE_CURRENT_SOURCE_DIR}/kernels/cuda)

# GPU tests (tests/gpu): they skip themselves where no GPU is present; precompile_check needs
# only libnvrtc.
if(NOT FA_PYTHON_ONLY AND FA_BUILD_TESTS AND EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/tests/gpu/CMakeLists.txt")
  enable_testing()
  add_subdirectory(tests/gpu) # targets named here (flashattn_static) resolve at generate time
endif()
