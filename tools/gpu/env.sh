# Sourced on the GPU machine from the repository root (carrying .gpu, made by tools/gpu/build.sh):
# unpacks the CUDA build of vidgen to /tmp/vidgen and points the loader at the driver and at the
# CUDA libraries already there (PyTorch's wheels hold cuBLAS, cuRAND, NVRTC and the runtime).
mkdir -p /tmp/cl
for n in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    f=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /opt /usr/local/lib /usr/lib64 -name "$n" 2>/dev/null | head -1)
    [ -n "$f" ] || f=$(find / -xdev -name "$n*" 2>/dev/null | head -1)
    [ -n "$f" ] && ln -sf "$f" /tmp/cl/$n || echo "env.sh: $n not found" >&2
done
export LD_LIBRARY_PATH=/tmp/cl:${LD_LIBRARY_PATH:-}
xz -d -T0 -c .gpu/vidgen.xz >/tmp/vidgen && chmod +x /tmp/vidgen
