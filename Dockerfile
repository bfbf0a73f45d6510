# dfs-p2p node image. No base image is pulled (the machine it is built on may
# have no registry): it is FROM scratch and takes the binary built on the host,
# staged with its shared libraries by scripts/docker-image.sh. So build it with
#
#     scripts/docker-image.sh            # cargo build --release, then docker build
#     scripts/docker-image.sh BINARY     # or from an already built dfs-p2p
#
# and start the three-node network with `docker-compose up -d` (or
# `docker compose up -d`). A bare `docker build .` works only once
# target/docker/rootfs has been staged.
FROM scratch
COPY target/docker/rootfs/ /
ENV PATH=/usr/local/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    RUST_BACKTRACE=1
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/dfs-p2p"]
CMD ["--listen", "/ip4/0.0.0.0/tcp/3000", "--data-dir", "/data"]
