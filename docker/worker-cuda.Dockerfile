# The CUDA worker image: rmgen-train built against the CUDA libtorch 2.x of the `torch` wheel
# and NCCL from the `nvidia-nccl-cu12` wheel (as bench/gpu/run.sh builds it), the agent and
# OpenMPI from Debian. Torch's CMake package needs a CUDA toolkit (nvcc) to configure against:
# BASE must have one under /usr/local/cuda (an nvidia/cuda devel image of the Debian 12 or
# Ubuntu 22.04 family); plain debian:12 does not, and the build stops at cmake saying so.
#   buildah bud -f docker/worker-cuda.Dockerfile --build-arg WHEELS=wheelhouse -t rmgen-worker-cuda .
# WHEELS: a folder in the build context holding the torch and nvidia-* wheels (no index is
# reachable on offline clusters); one without wheels (the default): pip downloads
# TORCH_VERSION from PyPI.
ARG BASE=debian:12

FROM ${BASE} AS build
ARG JOBS=2
ARG WHEELS=docker
ARG TORCH_VERSION=2.5.1
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends build-essential cmake pkg-config ca-certificates python3 \
      python3-venv libopenmpi-dev openmpi-bin libgrpc++-dev protobuf-compiler-grpc \
      libprotobuf-dev protobuf-compiler libyaml-cpp-dev libsentencepiece-dev nlohmann-json3-dev \
      libsqlite3-dev zlib1g-dev libcpp-httplib-dev \
    && rm -rf /var/lib/apt/lists/*
# Only what the build reads: an edit to the tests or the docs keeps the cached layers.
COPY CMakeLists.txt /src/
COPY cmake /src/cmake
COPY common /src/common
COPY proto /src/proto
COPY worker /src/worker
COPY coordinator /src/coordinator
COPY client /src/client
COPY docker/runtime-packages.sh /src/docker/
COPY ${WHEELS} /wheels
RUN python3 -m venv /opt/torch \
    && if ls /wheels/*.whl > /dev/null 2>&1; then \
         /opt/torch/bin/pip install --no-index --find-links /wheels torch nvidia-nccl-cu12; \
       else \
         /opt/torch/bin/pip install "torch==${TORCH_VERSION}" nvidia-nccl-cu12; \
       fi
RUN set -e; \
    SITE=$(/opt/torch/bin/python -c 'import site; print(site.getsitepackages()[0])'); \
    NCCL="$SITE/nvidia/nccl"; CUDART="$SITE/nvidia/cuda_runtime"; \
    cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DRMGEN_BUILD_TESTS=OFF \
      -DRMGEN_BUILD_BENCH=OFF \
      -DCMAKE_PREFIX_PATH="$(/opt/torch/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      -DNCCL_INCLUDE_DIR="$NCCL/include" -DNCCL_LIBRARY="$(ls "$NCCL"/lib/libnccl.so* | head -1)" \
      -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" \
    && cmake --build /build -j"${JOBS}" --target rmgen-worker rmgen-train rmgen rmgen_spm \
    && mkdir -p /out/bin /out/lib \
    && cp /build/lib/librmgen_spm.so /out/lib/ \
    && cp /build/worker/agent/rmgen-worker /build/worker/train/rmgen-train /build/client/rmgen \
          /out/bin/ \
    && LD_LIBRARY_PATH="$SITE/torch/lib:$NCCL/lib:$CUDART/lib" \
       sh /src/docker/runtime-packages.sh /out/bin/* /out/lib/* -- openmpi-bin ca-certificates > /out/packages \
    && { echo "$SITE/torch/lib"; ls -d "$SITE"/nvidia/*/lib; } > /out/rmgen-torch.conf

FROM ${BASE}
COPY --from=build /out/packages /tmp/packages
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends $(cat /tmp/packages) \
    && rm -rf /var/lib/apt/lists/* /tmp/packages \
    && groupadd --system --gid 10001 rmgen \
    && useradd --system --uid 10001 --gid rmgen --home-dir /srv/rmgen --create-home rmgen \
    && install -d -o rmgen -g rmgen /var/lib/rmgen-agent
# The wheels' libraries (torch, its CUDA runtime, cuBLAS, cuDNN, NCCL) travel whole.
COPY --from=build /opt/torch /opt/torch
COPY --from=build /out/bin/ /usr/local/bin/
# The SentencePiece shim, loaded at run time from ../lib of the binaries.
COPY --from=build /out/lib/ /usr/local/lib/
COPY --from=build /out/rmgen-torch.conf /etc/ld.so.conf.d/rmgen-torch.conf
RUN ldconfig
USER rmgen
WORKDIR /srv/rmgen
VOLUME /srv/rmgen /var/lib/rmgen-agent
ENV RMGEN_TOKEN_FILE=/run/secrets/rmgen-token
ENTRYPOINT ["rmgen-worker"]
CMD ["--coordinator", "coordinator:7070", "--token-file", "/run/secrets/rmgen-token", \
     "--state-dir", "/var/lib/rmgen-agent", "--workdir", "/srv/rmgen", \
     "--train-bin", "/usr/local/bin/rmgen-train", "--gpus-per-rank", "1"]
