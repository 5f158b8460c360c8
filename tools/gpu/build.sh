#!/usr/bin/env bash
# Builds `vidgen` with `--features cuda` on a machine with neither a GPU nor a CUDA toolkit, for
# a CUDA 13 machine with an sm_90 GPU (H100/H200), and packs it as .gpu/vidgen.xz for
# tools/gpu/env.sh there. nvcc and the CUDA headers come from NVIDIA's PyPI wheels; the driver
# and the CUDA libraries are linked against stubs that define the symbols vidgen uses (the real
# ones are found at run time). Run from the repository root:
#   tools/gpu/build.sh            # needs python3 -m pip (PyPI), gcc, cargo, xz
# A machine with the CUDA toolkit just runs `cargo build --release --features cuda`.
set -euo pipefail
root=${CUDA_PIP:-/opt/cuda-pip}
cuda=$root/nvidia/cu13
stubs=${CUDA_STUBS:-$root/stubs}
if [ ! -x "$cuda/bin/nvcc" ]; then
    mkdir -p "$root/wheels"
    python3 -m pip download --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 -d "$root/wheels" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
    for w in "$root"/wheels/*.whl; do unzip -q -o "$w" -d "$root"; done
fi
mkdir -p "$stubs"
ln -sf "$cuda/lib/libcudart.so.13" "$stubs/libcudart.so"

# name, soname, symbol pattern
libs=("cuda libcuda.so.1 ^cu[A-Z]" "nvrtc libnvrtc.so.13 ^nvrtc" "curand libcurand.so.10 ^curand"
      "cublasLt libcublasLt.so.13 ^cublasLt" "cublas libcublas.so.13 ^cublas[^L]")
make_stubs() { # $1: file of undefined symbols (may be empty)
    for spec in "${libs[@]}"; do
        read -r name soname pattern <<<"$spec"
        { grep -E "$pattern" "$1" || true; } | sed 's/.*/void &(void) {}/' >"$stubs/$name.c"
        gcc -shared -fPIC -o "$stubs/lib$name.so" -Wl,-soname,"$soname" "$stubs/$name.c"
    done
}

export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_PATH=$cuda CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="-L native=$stubs -C link-arg=-Wl,--error-limit=0"
build() { cargo build --release -p vidgen-cli --features cuda --target-dir target-cuda 2>&1; }
[ -f "$stubs/libcuda.so" ] || make_stubs /dev/null
if ! build >"$stubs/build.log"; then
    # the link lists every symbol the stubs lack: define them and link again
    grep -o 'undefined symbol: [A-Za-z0-9_]*' "$stubs/build.log" | cut -d' ' -f3 | sort -u \
        >"$stubs/symbols.txt"
    [ -s "$stubs/symbols.txt" ] || { tail -30 "$stubs/build.log"; exit 1; }
    make_stubs "$stubs/symbols.txt"
    build | tail -3
fi
mkdir -p .gpu
xz -T0 -6 -c target-cuda/release/vidgen >.gpu/vidgen.xz
cp tools/gpu/env.sh .gpu/
echo "packed .gpu/vidgen.xz ($(du -h .gpu/vidgen.xz | cut -f1)); on the device: source .gpu/env.sh"
