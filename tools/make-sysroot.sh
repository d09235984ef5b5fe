#!/usr/bin/env bash
# Build a sysroot in which `chipfit compile` checks modules for another CPU architecture under qemu-user:
# Debian's C library and Python 3.11 for ARCH (debootstrap's first stage, no chroot needed), plus PyPI's
# wheels of numpy and the TVM runtime for that architecture. Needs root for apt-get and debootstrap.
#   tools/make-sysroot.sh [aarch64] [DEST]      (DEST default: /opt/chipfit/sysroot-ARCH)
set -euo pipefail
ARCH=${1:-aarch64}
DEST=${2:-/opt/chipfit/sysroot-$ARCH}
case "$ARCH" in
  aarch64) DEB=arm64; PLAT=aarch64 ;;
  *) echo "make-sysroot: unsupported architecture '$ARCH' (supported: aarch64)" >&2; exit 2 ;;
esac
PY=${PYTHON:-.venv/bin/python}
TVM=$($PY -c 'import importlib.metadata as m; print(m.version("apache-tvm"))')
FFI=$($PY -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))')

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v "qemu-$ARCH" >/dev/null || need+=(qemu-user)
command -v "$ARCH-linux-gnu-g++" >/dev/null || need+=("g++-$ARCH-linux-gnu")
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if [ ! -x "$DEST/usr/bin/python3.11" ]; then
  debootstrap --foreign --arch="$DEB" --variant=minbase \
    --include=python3.11-minimal,libpython3.11-stdlib,libstdc++6,zlib1g,libffi8,libexpat1 \
    bookworm "$DEST" http://deb.debian.org/debian
  for d in "$DEST"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" "$DEST"; done
fi

wheels=$(mktemp -d)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --platform "manylinux_2_28_$PLAT" --platform "manylinux2014_$PLAT" --platform any -d "$wheels" \
  "apache-tvm==$TVM" "apache-tvm-ffi==$FFI" numpy ml_dtypes typing_extensions
mkdir -p "$DEST/opt/chipfit-py"
for w in "$wheels"/*.whl; do $PY -m zipfile -e "$w" "$DEST/opt/chipfit-py" >/dev/null; done
rm -rf "$wheels"

PYTHONPATH=/opt/chipfit-py "qemu-$ARCH" -L "$DEST" "$DEST/usr/bin/python3.11" -c \
  'import platform, numpy, tvm; print("sysroot ok:", platform.machine(), "tvm", tvm.__version__, "numpy", numpy.__version__)'
