# syntax=docker/dockerfile:1.7
# One image for every component: the command picks it (trellis run --target
# user|order|gateway|all). Build: docker build --build-arg VERSION=$(git describe --always) -t trellis .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/trellis ./cmd/trellis \
 && mkdir -p /out/data/identity

# distroless/static: CA certificates, tzdata, no shell, runs as nonroot.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="trellis" \
      org.opencontainers.image.source="https://github.com/trellis-mesh/trellis" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/trellis /usr/local/bin/trellis
COPY --from=build --chown=65532:65532 /out/data /data
ENV TRELLIS_DATA_DIR=/data \
    TRELLIS_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080 9001 9002 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/trellis", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/trellis"]
CMD ["run"]
