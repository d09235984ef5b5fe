#!/usr/bin/env bash
# Full-page screenshots of the three HTML reports on the bundled example, for README.md: report.html (fit),
# recommend.html and explore.html, taken with Debian's headless chromium (`make chromium` installs it), and of
# the team service's dashboard (tools/dashboard_screenshots.py: a real server driven with Playwright).
#   tools/screenshots.sh [fit] [recommend] [explore] [dashboard]      (default: all four; IMG=docs/img)
# Each report is built first (fit as `make demo` does; recommend with three targets and a 20 s budget;
# explore with 0.02 cpu-h, the least here that completes a trial; 0.005 stops its only one), then shot
# 1280 px wide in a tall window, cropped to the page, kept under 300 KB.
set -euo pipefail
BIN=${BIN:-.venv/bin}
IMG=${IMG:-docs/img}
WIDTH=1280
mkdir -p "$IMG"
if ! command -v chromium >/dev/null; then
  echo "screenshots: chromium is not installed: run 'make chromium' as root, or: sudo apt-get install chromium" >&2
  exit 2
fi

# Crop the shot to the page (the window is taller than any report: trailing rows of background go) and keep it
# under a size limit by reducing colours (Pillow comes with matplotlib).
crop_png() {
  "$BIN/python" - "$1" "$2" <<'EOF'
import os
import sys

from PIL import Image, ImageChops

path, limit = sys.argv[1], int(sys.argv[2])
im = Image.open(path).convert("RGB")
bg = Image.new("RGB", im.size, im.getpixel((im.width - 1, im.height - 1)))
box = ImageChops.difference(im, bg).getbbox()
if box:
    im = im.crop((0, 0, im.width, min(im.height, box[3] + 32)))
for colours in (256, 128, 64, 32, 16):
    im.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)
    if os.path.getsize(path) <= limit:
        break
print(f"{im.width}x{im.height}")
EOF
}

shoot() {  # shoot HTML PNG
  local html=$1 png=$2 profile size
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --user-data-dir="$profile" \
    --hide-scrollbars --window-size="$WIDTH,${HEIGHT:-6000}" --screenshot="$png" "file://$(realpath "$html")" \
    2>/dev/null
  rm -rf "$profile"
  size=$(crop_png "$png" 300000)
  echo "screenshots: $png ($(du -k "$png" | cut -f1) KB, $size)"
}

reports=("$@")
[ $# -gt 0 ] || reports=(fit recommend explore dashboard)
for what in "${reports[@]}"; do
  case "$what" in
    fit)
      "$BIN/chipfit" fit examples/digits/model.onnx --data examples/digits/eval.npz \
        --spec examples/digits/chipfit.yaml --out out/demo
      shoot out/demo/report.html "$IMG/report.png" ;;
    recommend)
      "$BIN/chipfit" recommend examples/digits/model.onnx --data examples/digits/eval.npz \
        --targets aws-c7i.xlarge,aws-c7g.xlarge,raspberry-pi-5 --time-budget 20s --out out/recommend
      shoot out/recommend/recommend.html "$IMG/recommend.png" ;;
    explore)
      "$BIN/chipfit" explore examples/explore/space.yaml --budget "${EXPLORE_BUDGET:-0.02cpu-h}" \
        --new-study --out out/explore
      shoot out/explore/explore.html "$IMG/explore.png" ;;
    dashboard)
      "$BIN/python" tools/dashboard_screenshots.py --img "$IMG" ;;
    *) echo "screenshots: unknown report '$what' (fit, recommend, explore or dashboard)" >&2; exit 2 ;;
  esac
done
