#!/usr/bin/env bash
# The Debian package as a user gets it: `cpack -G DEB` from the build folder,
# unpacked with dpkg-deb into a temporary folder (not installed), and run from
# there with no MFTK_PLUGIN_PATH: it must find every plugin the build made,
# carry the SDK and docs, keep only $ORIGIN-relative RPATHs, and depend on the
# Debian package of every library its files link.
set -euo pipefail
# Usage: check-deb.sh [BUILD_DIR]   (run by ctest as the test deb_package)
cd "$(dirname "$0")/.."
build=$(cd "${1:-build}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "check-deb: $*" >&2; exit 1; }

# Packaging only installs what is built; it builds nothing.
(cd "$build" && cpack -G DEB -B "$work/cpack" >"$work/cpack.log" 2>&1) || { cat "$work/cpack.log"; fail "cpack failed (it installs what is built and builds nothing: build the mftk_runtime target first)"; }
debs=("$work"/cpack/mftk_*_amd64.deb)
[[ ${#debs[@]} == 1 && -f ${debs[0]} ]] || fail "expected one mftk_<version>_amd64.deb, found: ${debs[*]}"
deb=${debs[0]}
dpkg-deb -I "$deb"
version=$(dpkg-deb -f "$deb" Version)
[[ $(basename "$deb") == "mftk_${version}_amd64.deb" ]] || fail "file name $(basename "$deb") does not carry version $version"
root="$work/root"
dpkg-deb -x "$deb" "$root"
mftk="$root/usr/bin/mftk"
[[ -x $mftk ]] || fail "no usr/bin/mftk in the package"

# The version the binary reports is the package's.
[[ $(env -u MFTK_PLUGIN_PATH "$mftk" --version | head -n1) == "mftk $version" ]] ||
  fail "mftk --version says '$("$mftk" --version)', the package is $version"

# Every plugin the build made is found next to the unpacked libmftk_core.so,
# loads and registers components. The list comes from the build's plugin folder.
mapfile -t built < <(cd "$build/lib/mftk/plugins" && ls libmftk-*.so | sed 's/^libmftk-//; s/\.so$//')
(( ${#built[@]} > 0 )) || fail "the build folder has no plugins; build the mftk_runtime target first"
(cd "$work" && env -u MFTK_PLUGIN_PATH -u LD_LIBRARY_PATH "$mftk" plugins) | tee "$work/plugins.txt"
for name in "${built[@]}"; do
  grep -Eq "^$name +[^ ]+ +ok +[a-z_0-9]+:.* $root/usr/.*/libmftk-$name\.so$" "$work/plugins.txt" ||
    fail "plugin $name is not listed as ok from the unpacked package"
done
listed=$(grep -c " ok .* $root/usr/.*/libmftk-.*\.so$" "$work/plugins.txt" || true)
(( listed == ${#built[@]} )) || fail "$listed plugins load from the package, the build made ${#built[@]}"

# SDK headers, the CMake package and the docs.
for f in usr/lib/cmake/mftk/mftkConfig.cmake usr/lib/cmake/mftk/mftkTargets.cmake usr/lib/cmake/mftk/MftkPlugin.cmake \
         usr/lib/libmftk_core.so usr/lib/libmftk_spm.so \
         usr/share/doc/mftk/README.md usr/share/doc/mftk/LICENSE usr/share/doc/mftk/THIRD_PARTY_NOTICES.md; do
  [[ -f $root/$f ]] || fail "$f missing from the package"
done
diff <(cd sdk/include && find mftk -type f | sort) <(cd "$root/usr/include" && find mftk -type f | sort) ||
  fail "the packaged SDK headers differ from sdk/include"
diff <(cd docs && find . -type f | sort) <(cd "$root/usr/share/doc/mftk/docs" && find . -type f | sort) ||
  fail "the packaged docs/ differ from the source's"

# An unpacked package works anywhere: every RPATH/RUNPATH entry is $ORIGIN-relative.
mapfile -t elfs < <(find "$root" -type f \( -name '*.so' -o -path '*/usr/bin/*' \) | sort)
for f in "${elfs[@]}"; do
  rpath=$(readelf -d "$f" | sed -n 's/.*(\(RPATH\|RUNPATH\)).*\[\(.*\)\]/\2/p')
  IFS=: read -ra entries <<<"$rpath"
  for e in "${entries[@]}"; do
    [[ $e == '$ORIGIN'* ]] || fail "${f#$root/} has RPATH entry '$e' (not \$ORIGIN-relative)"
  done
done

# Depends names the Debian package that owns each library a packaged file
# links (read from the ELF files and dpkg's database, not from the Depends
# line), plus what is only opened at run time: the sentencepiece library
# behind the dlmopen'd libmftk_spm.so, and OpenBLAS behind libblas.so.3.
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
mapfile -t dep_names < <(tr ',|' '\n\n' <<<"$depends" | sed 's/(.*)//; s/[[:space:]]//g' | grep -v '^$')
owner_of() {  # the package owning a library file; Debian 12's dpkg database lists some under /lib
  local p=$1 real
  real=$(readlink -f "$p")
  for c in "$p" "$real" "${p#/usr}" "${real#/usr}" "/usr$p" "/usr$real"; do
    dpkg-query -S "$c" 2>/dev/null | head -n1 | cut -d: -f1 && return 0
  done
  return 1
}
for pkg in libsentencepiece0 libopenblas0-openmp libjemalloc2; do
  printf '%s\n' "${dep_names[@]}" | grep -qxF "$pkg" || fail "Depends lacks $pkg; Depends: $depends"
done
required=()
# Every library a packaged ELF file names in NEEDED, resolved by ldd through the
# packaged RUNPATHs (so mftk's own libraries map into $root and are skipped).
declare -A linked=()
for f in "${elfs[@]}"; do
  needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
  while read -r lib _ path _; do
    [[ $path == "$root"/* ]] && continue
    [[ -n $path && $path != "not" ]] || fail "${f#$root/}: $lib does not resolve"
    linked[$path]=1
  done < <(ldd "$f" | awk -v needed="$needed" \
             'BEGIN { n = split(needed, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 } $1 in want && $2 == "=>" { print $1, $2, $3, $4 }')
done
for path in "${!linked[@]}"; do
  pkg=$(owner_of "$path") || fail "a packaged file links $path, which no Debian package owns"
  required+=("$pkg")
done
mapfile -t required < <(printf '%s\n' "${required[@]}" | sort -u)
for pkg in "${required[@]}"; do
  # A library package's shlibs may name a virtual package it provides
  # (libspdlog1.10 provides libspdlog1.10-fmt9): either name satisfies apt.
  mapfile -t names < <({ echo "$pkg"; dpkg-query -W -f='${Provides}\n' "$pkg" 2>/dev/null | tr ',' '\n'; } |
                       sed 's/(.*)//; s/[[:space:]]//g' | grep -v '^$')
  found=0
  for n in "${names[@]}"; do printf '%s\n' "${dep_names[@]}" | grep -qxF "$n" && found=1; done
  (( found )) || fail "Depends lacks $pkg (or what it provides: ${names[*]}); Depends: $depends"
done
echo "check-deb: Depends covers ${required[*]}"

# The unpacked tree runs: a tiny checkpoint (its tokenizer trained through the
# dlmopen'd libmftk_spm.so), then that tokenizer's pieces spell the text back.
(cd "$work" && env -u MFTK_PLUGIN_PATH "$mftk" init --preset tiny --layers 1 --seed 1 --out "$work/tiny" >/dev/null)
(cd "$work" && env -u MFTK_PLUGIN_PATH "$mftk" tokenize --model "$work/tiny" --text "the cat sat on the mat") >"$work/tok.json"
python3 - "$work/tok.json" <<'EOF'
import json, sys
pieces = json.load(open(sys.argv[1]))["pieces"]
text = "".join(p for p in pieces if p != "<s>").replace("\u2581", " ").strip()
assert text == "the cat sat on the mat", pieces
EOF
echo "check-deb: $(basename "$deb") unpacks, finds its ${#built[@]} plugins and runs"
