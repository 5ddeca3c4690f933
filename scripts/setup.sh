#!/usr/bin/env bash
# Set up dsmd on a fresh machine (Debian, Python >= 3.11): the Debian package of the demo's
# images, a virtual environment in .venv, torch, and dsmd itself.
#   bash scripts/setup.sh         # to run `dsmd demo`
#   bash scripts/setup.sh --dev   # also the test tools, the documentation site's tools (mkdocs),
#                                 # Debian's chromium for the browser test, and rsvg-convert for
#                                 # the benchmark's unpaired pools
#   bash scripts/setup.sh --benchmark   # rsvg-convert for the benchmark's pools, without the test tools
# Every mode installs the demo's photos and the offline benchmark's emoji and clip art (the
# demo scores its student on their test images, images of other kinds than its training photos).
# torch is installed first and pinned (TORCH_SPEC, default torch==2.13.0: the local CPU wheel
# on our machines) so that nothing pulls a multi-GB CUDA build; GPU users set TORCH_SPEC,
# e.g. TORCH_SPEC="torch==2.6.0 --index-url https://download.pytorch.org/whl/cu124".
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
benchmark=""
[ "${1:-}" = "--dev" ] && extras="[dev]" && benchmark=1
[ "${1:-}" = "--benchmark" ] && benchmark=1
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

debs=()
[ -d /usr/share/tuxpaint/stamps ] || debs+=(tuxpaint-stamps-default)   # the demo's captioned photos
# The offline benchmark's emoji and clip art: the demo's images of other kinds (its held-out
# test images) and dsmd build-benchmark's sources.
[ -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || debs+=(fonts-noto-color-emoji)
[ -d /usr/share/openclipart/png ] || debs+=(openclipart-png)
[ -d /usr/share/openclipart/svg ] || debs+=(openclipart-svg)
if [ -n "$extras" ]; then  # the browser test of `dsmd serve`
  command -v chromium >/dev/null || debs+=(chromium)
  command -v chromedriver >/dev/null || debs+=(chromium-driver)
fi
if [ -n "$benchmark" ]; then  # build-benchmark --unpaired renders Tux Paint's SVG stamps to keep them out of the pools
  command -v rsvg-convert >/dev/null || debs+=(librsvg2-bin)
fi
if [ ${#debs[@]} -gt 0 ]; then
  echo "setup: installing Debian packages ${debs[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${debs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
quiet_pip() {  # pip's failures still fail the script (pipefail); its noise about local indexes does not show
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
# shellcheck disable=SC2086  # TORCH_SPEC may carry pip options: "torch==2.6.0 --index-url URL"
quiet_pip $torch_spec
quiet_pip -e ".$extras"
.venv/bin/python - <<'PY'
import importlib.util, sys
import torch
for bad in ("torchvision", "timm", "open_clip"):
    if importlib.util.find_spec(bad) is not None:
        sys.exit(f"setup: {bad} is installed in .venv; it breaks this torch. Remove it: .venv/bin/pip uninstall -y {bad}")
import dsmd
print(f"setup: ok (dsmd {dsmd.__version__}, torch {torch.__version__})")
PY
