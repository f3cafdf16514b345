# The coordinator image: rmgen-coordinator and the rmgen CLI (no torch), as a non-root user,
# the data directory a volume.
#   buildah bud -f docker/coordinator.Dockerfile -t rmgen-coordinator .   (or docker build)
# BASE: any Debian 12 image (default debian:12; the container test passes one it made with
# debootstrap, since no registry is reachable there).
ARG BASE=debian:12

FROM ${BASE} AS build
ARG JOBS=2
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends build-essential cmake pkg-config ca-certificates \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libyaml-cpp-dev \
      libsentencepiece-dev nlohmann-json3-dev libsqlite3-dev zlib1g-dev libopenmpi-dev libcpp-httplib-dev \
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
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=Release -DRMGEN_WITH_TORCH=OFF \
      -DRMGEN_BUILD_TESTS=OFF -DRMGEN_BUILD_BENCH=OFF -DRMGEN_USE_PCH=OFF \
    && cmake --build /build -j"${JOBS}" --target rmgen-coordinator rmgen rmgen_spm \
    && mkdir -p /out/bin /out/lib \
    && cp /build/lib/librmgen_spm.so /out/lib/ \
    && cp /build/coordinator/rmgen-coordinator /build/client/rmgen /out/bin/ \
    && strip /out/bin/* /out/lib/* \
    && sh /src/docker/runtime-packages.sh /out/bin/* /out/lib/* -- ca-certificates > /out/packages

FROM ${BASE}
COPY --from=build /out/packages /tmp/packages
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
      --no-install-recommends $(cat /tmp/packages) \
    && rm -rf /var/lib/apt/lists/* /tmp/packages \
    && groupadd --system --gid 10001 rmgen \
    && useradd --system --uid 10001 --gid rmgen --home-dir /var/lib/rmgen --create-home rmgen \
    && install -d -o rmgen -g rmgen /srv/rmgen
COPY --from=build /out/bin/ /usr/local/bin/
# The SentencePiece shim, loaded at run time from ../lib of the binaries.
COPY --from=build /out/lib/ /usr/local/lib/
USER rmgen
WORKDIR /var/lib/rmgen
# /srv/rmgen: where compose mounts the volume shared with the workers (the output root);
# made here, owned by rmgen, so a fresh named volume starts writable by the workers.
VOLUME /var/lib/rmgen /srv/rmgen
EXPOSE 7070
# The health check signs in like any client: a token in RMGEN_TOKEN_FILE, and
# RMGEN_COORDINATOR where the coordinator listens when not on 7070.
ENV RMGEN_TOKEN_FILE=/run/secrets/rmgen-token RMGEN_COORDINATOR=127.0.0.1:7070
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
  CMD rmgen status > /dev/null || exit 1
ENTRYPOINT ["rmgen-coordinator"]
CMD ["--listen", "0.0.0.0:7070", "--data-dir", "/var/lib/rmgen", "--tokens", "/run/secrets/rmgen-tokens.yaml"]
