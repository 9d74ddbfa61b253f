#!/usr/bin/env bash
# The plugin boundary (issue 17): a first-party plugin is built as a third
# party's would be, against the SDK only. Fails, listing each violation, when
#   - a file under plugins/<name>/ includes a quoted header that is neither
#     in its own plugin folder nor an SDK header (sdk/include/mftk/...);
#   - a plugin's CMakeLists.txt puts core/ (or another plugin's folder) on
#     an include path;
#   - a plugin's CMakeLists.txt links a library target defined by another
#     plugin (mftk_<other>_impl): shared code belongs in the SDK.
# Angle-bracket includes (<fmt/format.h>, <ATen/ATen.h>) are third-party
# libraries and are not checked.
set -euo pipefail
# Usage: check-plugin-boundary.sh [SOURCE_DIR]   (run by ctest as plugin_boundary)
#        check-plugin-boundary.sh --self-test    (the check against a made-up tree with known violations)
if [[ ${1:-} == --self-test ]]; then
  fake=$(mktemp -d)
  trap 'rm -rf "$fake"' EXIT
  mkdir -p "$fake/sdk/include/mftk" "$fake/plugins/good/detail" "$fake/plugins/bad" "$fake/core/data"
  touch "$fake/sdk/include/mftk/rows.h" "$fake/core/data/batching.h"
  printf '#include "good.h"\n#include "detail/util.h"\n#include "mftk/rows.h"\n#include <vector>\n' >"$fake/plugins/good/good.cpp"
  printf '#include "util.h"\n' >"$fake/plugins/good/detail/util.cpp"
  touch "$fake/plugins/good/good.h" "$fake/plugins/good/detail/util.h"
  printf 'add_library(mftk_good_impl STATIC good.cpp)\n# a comment naming ${PROJECT_SOURCE_DIR}/core is fine\ntarget_link_libraries(mftk_good_impl PUBLIC mftk_core)\n' \
    >"$fake/plugins/good/CMakeLists.txt"
  printf '#include "batching.h"\n#include "../good/good.h"\n#include "mftk/missing.h"\n' >"$fake/plugins/bad/bad.cpp"
  printf 'add_library(mftk_bad_impl STATIC bad.cpp)\ntarget_include_directories(mftk_bad_impl PRIVATE ${PROJECT_SOURCE_DIR}/core)\ntarget_link_libraries(mftk_bad_impl PUBLIC mftk_core mftk_good_impl)\n' \
    >"$fake/plugins/bad/CMakeLists.txt"
  set +e
  report=$(bash "$0" "$fake")
  status=$?
  set -e
  echo "$report"
  expected=("bad.cpp includes \"batching.h\"" "bad.cpp includes \"../good/good.h\"" "bad.cpp includes \"mftk/missing.h\""
            "bad/CMakeLists.txt adds core/" "bad/CMakeLists.txt links mftk_good_impl")
  for line in "${expected[@]}"; do
    grep -qF "$line" <<<"$report" || { echo "self-test: the check missed: $line"; exit 1; }
  done
  [[ $status -eq 1 ]] || { echo "self-test: exit status $status, expected 1"; exit 1; }
  [[ $(grep -c '^boundary: ' <<<"$report") -eq ${#expected[@]} ]] || { echo "self-test: unexpected reports"; exit 1; }
  ! grep -q 'plugins/good' <<<"$report" || { echo "self-test: flagged the good plugin"; exit 1; }
  echo "self-test: ok"
  exit 0
fi
root=${1:-$(dirname "$0")/..}
cd "$root"
failures=0
fail() {
  echo "boundary: $*"
  failures=$((failures + 1))
}

for plugin_dir in plugins/*/; do
  plugin_dir=${plugin_dir%/}
  # Quoted includes: the plugin's own folder, or the SDK.
  while IFS= read -r -d '' file; do
    while IFS= read -r line; do
      header=$(sed -E 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/' <<<"$line")
      if [[ $header == mftk/* ]]; then
        [[ -f sdk/include/$header ]] || fail "$file includes \"$header\": no such SDK header (sdk/include/$header)"
        continue
      fi
      # Resolved as the compiler would: beside the file, then from the plugin folder.
      candidate=""
      for base in "$(dirname "$file")" "$plugin_dir"; do
        if [[ -f $base/$header ]]; then
          candidate=$(realpath -m "$base/$header")
          break
        fi
      done
      own=$(realpath -m "$plugin_dir")
      if [[ -z $candidate || $candidate != "$own"/* ]]; then
        fail "$file includes \"$header\", which is outside $plugin_dir/ and the SDK"
      fi
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$file" || true)
  done < <(find "$plugin_dir" -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.cpp' -o -name '*.cc' \) -print0)

  cmake_file=$plugin_dir/CMakeLists.txt
  [[ -f $cmake_file ]] || continue
  # Include paths into the core or another plugin (comments stripped first).
  code=$(sed -E 's/#.*$//' "$cmake_file")
  if grep -qE '(PROJECT_SOURCE_DIR|CMAKE_SOURCE_DIR|CMAKE_CURRENT_SOURCE_DIR)\}/(\.\./)*core' <<<"$code"; then
    fail "$cmake_file adds core/ to an include path"
  fi
  if grep -qE '(PROJECT_SOURCE_DIR|CMAKE_SOURCE_DIR)\}/plugins|CMAKE_CURRENT_SOURCE_DIR\}/\.\.' <<<"$code"; then
    fail "$cmake_file reaches into another plugin's folder"
  fi
  # Targets this file defines may be linked; any other plugin's may not.
  own_targets=$(grep -oE 'add_library\([[:space:]]*[A-Za-z0-9_]+' <<<"$code" | sed -E 's/add_library\([[:space:]]*//' || true)
  for target in $(grep -oE 'mftk_[A-Za-z0-9_]+_impl' <<<"$code" | sort -u); do
    grep -qxF "$target" <<<"$own_targets" || fail "$cmake_file links $target, another plugin's library"
  done
done

if ((failures > 0)); then
  echo "plugin boundary: $failures violation(s)"
  exit 1
fi
echo "plugin boundary: ok (every plugin includes only its own headers and the SDK's, and links no other plugin)"
