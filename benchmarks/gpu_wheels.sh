#!/usr/bin/env bash
# Run HERE (where pip reaches PyPI), once per checkout, before `device run` of gpu_run.sh:
# downloads into .whl/ (kept out of git by .git/info/exclude) the Python 3.12 x86-64 wheels
# that the GPU machine's image lacks (pydantic and its helpers) or has in another version
# (transformers 5.24, which pact is tested with here; the image had 5.17). ~17 MB, carried
# with `carry: [".whl"]`. flash-attn has no wheel on PyPI (source only, and building it takes
# far longer than a device command may run): without it the suite uses torch's sdpa, whose
# FlashAttention-2 backend it checks, and says so in its output.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$@"
}
download transformers==5.24.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
  typing-inspection==0.4.2 typing-extensions==4.16.0 regex==2026.5.9
if ! download flash-attn==2.8.3 2>/dev/null; then
  echo "flash-attn 2.8.3: no wheel for cp312/manylinux on PyPI; the suite will run on sdpa"
fi
ls -l .whl
