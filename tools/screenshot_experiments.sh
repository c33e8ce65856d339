#!/bin/sh
# Runs `normlab experiment all --quick` into a temporary directory and takes
# screenshots of the pages with headless Chromium (Debian's `chromium`
# package: apt-get install -y chromium), so that one can check that the
# self-contained pages open and render in a real browser.
#
#   tools/screenshot_experiments.sh [OUT_DIR]
#
# Writes OUT_DIR/index.png (the top-level index) and OUT_DIR/<name>.png for
# each experiment's page (default OUT_DIR: screenshots/ under a temporary
# directory, printed at the end). Exits 1 if a screenshot is missing or
# empty. Uses the committed 2,000-image subset, so no download is needed.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
out=${1:-$work/screenshots}
mkdir -p "$out"
out=$(cd "$out" && pwd)

browser=""
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
    echo "error: no chromium found; install it with: apt-get install -y chromium" >&2
    exit 1
fi

cd "$root"
cargo build --release --quiet
./target/release/normlab experiment all --quick --seeds 2 --quiet \
    --data-dir tests/data/fashion-mnist-subset --out "$work/experiments" >/dev/null

shot() { # page.html shot.png height
    profile=$(mktemp -d)
    # headless, no network or background services, a throwaway profile
    timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --hide-scrollbars --user-data-dir="$profile" --window-size=1280,"$3" \
        --screenshot="$2" "file://$1" >/dev/null 2>&1 || true
    rm -rf "$profile"
    if [ ! -s "$2" ]; then
        echo "error: no screenshot of $1" >&2
        exit 1
    fi
    echo "$2"
}

shot "$work/experiments/index.html" "$out/index.png" 2000
for page in "$work"/experiments/*/index.html; do
    name=$(basename "$(dirname "$page")")
    shot "$page" "$out/$name.png" 3000
done
echo "pages in $work/experiments, screenshots in $out"
