# A stand-in for torch's own TorchConfig.cmake, for building mftk against a
# Python torch (pip wheel) on a machine without the CUDA toolkit: torch's
# package finds nvcc and the CUDA headers even for code that compiles no CUDA,
# and stops without them. mftk compiles no CUDA and calls CUDA only through
# libtorch, so the wheel's headers and libraries suffice. scripts/device-check.sh
# uses this only after torch's own package failed to configure.
#
# Input: MFTK_TORCH_PIP_ROOT, the wheel's torch/ folder (os.path.dirname(torch.__file__)).
# Output, as torch's package defines them: Torch_FOUND, TORCH_LIBRARIES,
# TORCH_INCLUDE_DIRS, TORCH_CXX_FLAGS, Torch_VERSION / TORCH_VERSION. No
# torch_cuda target: core/CMakeLists.txt then compiles no NCCL process group
# (one GPU needs none).
if(NOT MFTK_TORCH_PIP_ROOT OR NOT EXISTS "${MFTK_TORCH_PIP_ROOT}/include/torch/csrc/api/include/torch/version.h")
  set(Torch_FOUND FALSE)
  set(Torch_NOT_FOUND_MESSAGE "set MFTK_TORCH_PIP_ROOT to a pip torch's folder (python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')")
  return()
endif()
set(_root "${MFTK_TORCH_PIP_ROOT}")
file(STRINGS "${_root}/include/torch/csrc/api/include/torch/version.h" _v REGEX "#define TORCH_VERSION_(MAJOR|MINOR|PATCH) ")
string(REGEX REPLACE ".*MAJOR ([0-9]+).*MINOR ([0-9]+).*PATCH ([0-9]+).*" "\\1.\\2.\\3" Torch_VERSION "${_v}")
set(TORCH_VERSION "${Torch_VERSION}")
set(PACKAGE_VERSION "${Torch_VERSION}")

# The wheel's C++ string ABI, which everything linking with it must share.
execute_process(COMMAND python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
                OUTPUT_VARIABLE _abi OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _abi_rc)
if(NOT _abi_rc EQUAL 0)
  set(_abi 1)
endif()
set(TORCH_CXX_FLAGS "-D_GLIBCXX_USE_CXX11_ABI=${_abi}")

set(TORCH_INCLUDE_DIRS "${_root}/include" "${_root}/include/torch/csrc/api/include")
add_library(torch SHARED IMPORTED)
set_target_properties(torch PROPERTIES
  IMPORTED_LOCATION "${_root}/lib/libtorch.so"
  INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
  INTERFACE_COMPILE_OPTIONS "${TORCH_CXX_FLAGS}")
set(TORCH_LIBRARIES torch "${_root}/lib/libtorch_cpu.so" "${_root}/lib/libc10.so")
# libtorch_cuda registers CUDA with ATen when it loads; nothing calls into it
# by name, so --as-needed would drop it and the GPU would be invisible.
foreach(_cuda_lib torch_cuda c10_cuda)
  if(EXISTS "${_root}/lib/lib${_cuda_lib}.so")
    list(APPEND TORCH_LIBRARIES "-Wl,--no-as-needed,${_root}/lib/lib${_cuda_lib}.so,--as-needed")
  endif()
endforeach()
set(Torch_FOUND TRUE)
message(STATUS "mftk: libtorch ${Torch_VERSION} from the pip wheel at ${_root} (cmake/torch-pip)")
