# Source on the GPU machine, from the repository root, after scripts/gpu/prepare.sh ran here
# and its .gpu/ folders travelled: installs them under /tmp/gpu-site and points Python and
# the dynamic loader there.
site=/tmp/gpu-site
mkdir -p "$site"
if [ -f .gpu/search/faiss.tar.xz ] && [ .gpu/search/faiss.tar.xz -nt "$site/.faiss-stamp" ]; then
  rm -rf "$site/faiss" "$site"/faiss_gpu*.libs
  tar -C "$site" -xJf .gpu/search/faiss.tar.xz && touch "$site/.faiss-stamp"
fi
if compgen -G ".gpu/*/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .gpu/*/*.whl
fi
# cuBLAS 13 from the machine's own CUDA wheels, for the cuBLAS 12 shim to forward to.
cublas13=$(python3 -c 'import glob, os, site; print(next((os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/libcublas.so.13", recursive=True)), ""))')
# faiss-gpu dlopens its CUDA 12 libraries from the nvidia.* pip packages' lib/ folders before
# it loads libfaiss: lay ours out that way (curand it loads but never calls).
for part in cuda_runtime cublas curand; do mkdir -p "$site/nvidia/$part/lib"; done
if [ -d .gpu/search/lib ]; then
  cp -f .gpu/search/lib/libcudart.so.12 "$site/nvidia/cuda_runtime/lib/"
  cp -f .gpu/search/lib/libcublas*.so.12 "$site/nvidia/cublas/lib/"
fi
curand=$cublas13/libcurand.so.10
[ -f "$curand" ] || curand=$site/nvidia/cublas/lib/libcublasLt.so.12
ln -sf "$curand" "$site/nvidia/curand/lib/libcurand.so.10"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$site/nvidia/cublas/lib:$site/nvidia/cuda_runtime/lib:$cublas13${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
