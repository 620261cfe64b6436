#!/usr/bin/env bash
# Installs torch into the virtualenv whose python is $1, for `make run` and `make test`.
#   TORCH=cpu (default): the CPU build. On Linux x86-64 PyPI's wheel is the CUDA build (several
#     GB with cuDNN, NCCL and friends), so there it is torch==V+cpu from PyTorch's CPU index;
#     elsewhere (macOS, ARM) PyPI's own wheel is already the CPU one.
#   TORCH=cuda: PyPI's default wheel, the CUDA build on Linux, for a machine with GPUs.
# A matching wheel already on this machine (pip's find-links) is installed first without asking
# any index, so a machine that carries it pays no index look-up; torch's own dependencies then
# come with the backend extra.
set -euo pipefail
py=${1:?usage: install-torch.sh VENV_PYTHON}
version=${TORCH_VERSION:?TORCH_VERSION is not set}
flavour=${TORCH:-cpu}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

case "$flavour" in
  cpu)
    spec="torch==$version"
    [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && spec="torch==$version+cpu"
    if pip install -q --no-index --no-deps "$spec" >/dev/null 2>&1; then
      echo "    $spec from a wheel on this machine"
      exit 0
    fi
    echo "    $spec from $cpu_index"
    pip install --extra-index-url "$cpu_index" "$spec"
    ;;
  cuda)
    echo "    torch==$version (CUDA build) from the package index"
    pip install "torch==$version"
    ;;
  *)
    echo "TORCH=$flavour: expected cpu or cuda" >&2
    exit 2
    ;;
esac
