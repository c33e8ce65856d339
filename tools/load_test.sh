#!/usr/bin/env bash
# Memory under load (issue 6). Run once from anywhere in the repository:
#
#   tools/load_test.sh
#
# 1. A 100-epoch run on a small subset (1,024 training images): its resident
#    memory (VmRSS, sampled every 0.5 s) after epoch 1 and at the end must
#    agree within 10% (no leak per epoch).
# 2. One epoch on a synthetic training set ten times the size of
#    Fashion-MNIST (the 60,000 real images repeated ten times, a few pixels
#    changed in each copy: 600,000 images, 470 MB of pixels), written as gzip
#    IDX under $NORMLAB_LOAD_DIR (default /tmp/normlab-load, never the
#    repository), against one epoch on the real 60,000: the peak memory may
#    grow by the data's own size, not by a multiple of it.
#
# Needs python3 (to write the synthetic files) and the full Fashion-MNIST
# ($NORMLAB_FULL_DATA, default /usr/share/datasets/fashion-mnist, Debian's
# dataset-fashion-mnist); without it the committed 2,000-image subset is
# repeated instead (300 and 30 times). Takes a few minutes of CPU; run it on
# an otherwise idle machine, one training at a time.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=./target/release/normlab
[ -x "$BIN" ] || cargo build --release
WORK=${NORMLAB_LOAD_DIR:-/tmp/normlab-load}
FULL=${NORMLAB_FULL_DATA:-/usr/share/datasets/fashion-mnist}
SUBSET=tests/data/fashion-mnist-subset
rm -rf "$WORK"
mkdir -p "$WORK"

# run_sampled NAME ARGS...: runs `normlab ARGS --json` (stdout to
# $WORK/NAME.out) and writes one line per 0.5 s (0.05 s during the first
# epoch) to $WORK/NAME.rss:
# "seconds epochs_done VmRSS_kB VmHWM_kB".
run_sampled() {
    local name=$1
    shift
    local out="$WORK/$name.out" samples="$WORK/$name.rss"
    : >"$samples"
    local t0
    t0=$(date +%s.%N)
    "$BIN" "$@" --json >"$out" 2>"$WORK/$name.err" &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        local st rss hwm epochs
        st=$(cat "/proc/$pid/status" 2>/dev/null) || break
        rss=$(awk '/^VmRSS:/ {print $2}' <<<"$st")
        hwm=$(awk '/^VmHWM:/ {print $2}' <<<"$st")
        [ -n "$rss" ] || break # a zombie: the memory is gone
        epochs=$(grep -c '"epoch":' "$out" || true)
        echo "$(echo "$(date +%s.%N) - $t0" | bc) $epochs $rss $hwm" >>"$samples"
        # every 0.5 s, and every 0.05 s until the first epoch ends so that
        # the first sample after it is taken right after it
        if [ "$epochs" -ge 1 ]; then sleep 0.5; else sleep 0.05; fi
    done
    local rc=0
    wait "$pid" || rc=$?
    local t1
    t1=$(date +%s.%N)
    echo "$(echo "$t1 - $t0" | bc)" >"$WORK/$name.seconds"
    if [ "$rc" != 0 ]; then
        echo "normlab $* failed with exit code $rc:" >&2
        cat "$WORK/$name.err" >&2
        exit 1
    fi
}

mb() { echo "scale=1; $1 / 1024" | bc; }

echo "== 1. 100 epochs on 1,024 images: resident memory per epoch"
run_sampled long train --limit-train 1024 --limit-val 256 --epochs 100 --batch-size 128 \
    --data-dir "$SUBSET" --quiet --out "$WORK/long-run"
# first sample after epoch 1, last sample
read -r t_start e_start rss_start _ < <(awk '$2 >= 1' "$WORK/long.rss" | head -1)
read -r t_end e_end rss_end hwm_end < <(tail -1 "$WORK/long.rss")
read -r rss_min rss_max < <(awk '$2 >= 1 {if (min == "" || $3 < min) min = $3; if ($3 > max) max = $3} END {print min, max}' "$WORK/long.rss")
change=$(echo "scale=2; 100 * ($rss_end - $rss_start) / $rss_start" | bc)
echo "samples: $(wc -l <"$WORK/long.rss") over $(cat "$WORK/long.seconds") s"
echo "after epoch $e_start (t=${t_start}s): VmRSS $(mb "$rss_start") MiB"
echo "at the end, epoch $e_end (t=${t_end}s): VmRSS $(mb "$rss_end") MiB (change ${change}%), peak VmHWM $(mb "$hwm_end") MiB"
echo "VmRSS after epoch 1, min / max: $(mb "$rss_min") / $(mb "$rss_max") MiB"
steady=$(echo "define abs(x) { if (x < 0) return -x; return x; }; abs($change) <= 10" | bc)
[ "$steady" = 1 ] && echo "PASS: steady within 10%" || echo "FAIL: memory grows by ${change}% over 100 epochs"

echo
echo "== 2. one epoch on 600,000 images vs 60,000"
mkdir -p "$WORK/x10" "$WORK/x1"
python3 - "$FULL" "$SUBSET" "$WORK" <<'EOF'
import gzip, os, shutil, struct, sys, time

full, subset, work = sys.argv[1:4]
src = full if os.path.exists(os.path.join(full, "train-images-idx3-ubyte.gz")) else subset
def read(name):
    with gzip.open(os.path.join(src, name)) as f:
        return f.read()
images, labels = read("train-images-idx3-ubyte.gz"), read("train-labels-idx1-ubyte.gz")
n = struct.unpack(">I", images[4:8])[0]
pixels, labs = images[16:], labels[8:]
invert = bytes(255 - v for v in range(256))

def write(dir, target):
    t = time.time()
    reps = target // n
    out = bytearray()
    for r in range(reps):
        copy = bytearray(pixels)
        if r > 0:
            # a few pixels changed in every image of each copy: three
            # columns of the 784 inverted
            for k in range(3):
                o = (r * 97 + k * 263) % 784
                copy[o::784] = bytes(copy[o::784]).translate(invert)
        out += copy
    total = reps * n
    with gzip.open(os.path.join(work, dir, "train-images-idx3-ubyte.gz"), "wb", compresslevel=1) as f:
        f.write(struct.pack(">IIII", 0x803, total, 28, 28))
        f.write(out)
    with gzip.open(os.path.join(work, dir, "train-labels-idx1-ubyte.gz"), "wb", compresslevel=1) as f:
        f.write(struct.pack(">II", 0x801, total))
        f.write(labs * reps)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(src, name), os.path.join(work, dir, name))
    print(f"wrote {total} training images ({total * 784 / 1e6:.0f} MB of pixels) from {src} to {work}/{dir} in {time.time() - t:.0f} s")

write("x10", 600_000)
if src == full:
    os.rmdir(os.path.join(work, "x1"))
    os.symlink(full, os.path.join(work, "x1"))
    print(f"the 60,000-image run reads {full}")
else:
    write("x1", 60_000)
EOF

for set in x1 x10; do
    run_sampled "$set" train --epochs 1 --limit-val 1000 --batch-size 128 --data-dir "$WORK/$set" --quiet --out "$WORK/$set-run"
done
peak() { awk '{if ($4 > m) m = $4} END {print m}' "$WORK/$1.rss"; }
p1=$(peak x1)
p10=$(peak x10)
d1=$((60000 * 784 / 1024))
d10=$((600000 * 784 / 1024))
over1=$((p1 - d1))
over10=$((p10 - d10))
echo "60,000 images:  peak VmHWM $(mb "$p1") MiB (pixels $(mb "$d1") MiB, the rest $(mb "$over1") MiB), $(cat "$WORK/x1.seconds") s"
echo "600,000 images: peak VmHWM $(mb "$p10") MiB (pixels $(mb "$d10") MiB, the rest $(mb "$over10") MiB), $(cat "$WORK/x10.seconds") s"
echo "peak ratio 600k/60k: $(echo "scale=2; $p10 / $p1" | bc); growth $(mb $((p10 - p1))) MiB for $(mb $((d10 - d1))) MiB more pixels ($(echo "scale=2; ($p10 - $p1) / ($d10 - $d1)" | bc) x)"
# "near the data's own size plus a constant": what is not pixels grows by at most 25% of the added data
limit=$((over1 + (d10 - d1) / 4))
[ "$over10" -le "$limit" ] && echo "PASS: peak = data + a constant (the rest grew by $(mb $((over10 - over1))) MiB)" ||
    echo "FAIL: beyond the data, the 600,000-image run needs $(mb $((over10 - over1))) MiB more than the 60,000-image run"
echo "samples and outputs in $WORK (delete it when done: the synthetic set is $(du -sh "$WORK/x10" | cut -f1))"
