# The CPU worker image: rmgen-worker (the agent), rmgen-train (libtorch from Debian, OpenBLAS
# with OpenMP) and OpenMPI, as a non-root user. Jobs' folders and data live on a volume that
# every worker (and the coordinator, for the output root) mounts at the same path.
#   buildah bud -f docker/worker.Dockerfile -t rmgen-worker .   (or docker build)
ARG BASE=debian:12

FROM ${BASE} AS build
ARG JOBS=2
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends build-essential cmake pkg-config ca-certificates \
      libtorch-dev libopenblas0-openmp libopenmpi-dev openmpi-bin \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libyaml-cpp-dev \
      libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev zlib1g-dev libcpp-httplib-dev \
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
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DRMGEN_BUILD_TESTS=OFF \
      -DRMGEN_BUILD_BENCH=OFF \
    && cmake --build /build -j"${JOBS}" --target rmgen-worker rmgen-train rmgen rmgen_spm \
    && mkdir -p /out/bin /out/lib \
    && cp /build/lib/librmgen_spm.so /out/lib/ \
    && cp /build/worker/agent/rmgen-worker /build/worker/train/rmgen-train /build/client/rmgen \
          /out/bin/ \
    && strip /out/bin/* /out/lib/* \
    && sh /src/docker/runtime-packages.sh /out/bin/* /out/lib/* -- openmpi-bin libopenblas0-openmp \
         ca-certificates > /out/packages

FROM ${BASE}
COPY --from=build /out/packages /tmp/packages
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends $(cat /tmp/packages) \
    && rm -rf /var/lib/apt/lists/* /tmp/packages \
    && groupadd --system --gid 10001 rmgen \
    && useradd --system --uid 10001 --gid rmgen --home-dir /srv/rmgen --create-home rmgen \
    && install -d -o rmgen -g rmgen /var/lib/rmgen-agent
COPY --from=build /out/bin/ /usr/local/bin/
# The SentencePiece shim, loaded at run time from ../lib of the binaries.
COPY --from=build /out/lib/ /usr/local/lib/
USER rmgen
WORKDIR /srv/rmgen
# /srv/rmgen: shared by every worker (jobs' folders, data); /var/lib/rmgen-agent: this
# agent's own attempt records, kept across restarts of the container.
VOLUME /srv/rmgen /var/lib/rmgen-agent
# One rank per thread by default; the agent's --slots sets how many ranks run at once.
ENV OMP_NUM_THREADS=1 RMGEN_TOKEN_FILE=/run/secrets/rmgen-token
ENTRYPOINT ["rmgen-worker"]
CMD ["--coordinator", "coordinator:7070", "--token-file", "/run/secrets/rmgen-token", \
     "--state-dir", "/var/lib/rmgen-agent", "--workdir", "/srv/rmgen", \
     "--train-bin", "/usr/local/bin/rmgen-train"]
