#!/bin/sh
# Build serve.cpp against the libtorch of the installed torch wheel (its headers and libraries):
#   sh examples/libtorch/build.sh [OUT]        (OUT: the program's path, ./serve by default)
# About a minute on 2 cores. Needs g++ (C++20) and the python whose torch the package was made with.
set -e
here=$(dirname "$0")
torch_dir=$(python -c "import os, torch; print(os.path.dirname(torch.__file__))")
abi=$(python -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
${CXX:-g++} -std=c++20 -O2 "$here/serve.cpp" -o "${1:-serve}" -D_GLIBCXX_USE_CXX11_ABI="$abi" \
    -I"$torch_dir/include" -I"$torch_dir/include/torch/csrc/api/include" \
    -L"$torch_dir/lib" -Wl,-rpath,"$torch_dir/lib" -ltorch -ltorch_cpu -lc10 -ldl
