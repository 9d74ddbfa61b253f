#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU and a Python torch (CUDA)
# but none of mftk's Debian build dependencies: unpack the bundle that
# scripts/device-bundle.sh made (dpkg -x, no root), build mftk against that
# torch's libtorch, run the tests that matter on a GPU, and benchmark 7B-shape
# LoRA and QLoRA steps on the GPU next to transformers + PEFT (+ bitsandbytes)
# on the same checkpoint, row length and batch, in the same run. Writes one
# JSON (OUT/device-check.json) and prints one table. Sized for 10 minutes on
# 16 cores, build included.
#
# usage: scripts/device-check.sh [--dry-run] [--bundle DIR] [--out DIR]
#   --dry-run  print every step's commands and check what can be checked here
#              (the bundle against its manifest, the scripts, the recipe
#              template) without building or running anything
#   --bundle   the bundle folder (default: device-bundle/)
#   --out      where the JSON and the logs go (default: $OUT when set, as the
#              device run tool sets it, else device-check-out/)
#   --work     the unpacked .debs, the build and the benchmark checkpoint (~3 GB;
#              default: device-check-work/)
# Knobs (environment): MFTK_CHECK_LAYERS (4), MFTK_CHECK_SEQ (2048),
#   MFTK_CHECK_BATCH (1), MFTK_CHECK_WARMUP (4), MFTK_CHECK_STEPS (8; a multiple of WARMUP).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dry=0
bundle=$here/device-bundle
out=${OUT:-$here/device-check-out}
work=$here/device-check-work
while (($#)); do
  case $1 in
    --dry-run) dry=1 ;;
    --bundle) bundle=$(cd "$2" && pwd); shift ;;
    --out) out=$2; shift ;;
    --work) work=$2; shift ;;
    -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

layers=${MFTK_CHECK_LAYERS:-4}
seq=${MFTK_CHECK_SEQ:-2048}
batch=${MFTK_CHECK_BATCH:-1}
warmup=${MFTK_CHECK_WARMUP:-4}
steps=${MFTK_CHECK_STEPS:-8}
if ((steps % warmup != 0)); then
  echo "device-check: MFTK_CHECK_STEPS ($steps) must be a multiple of MFTK_CHECK_WARMUP ($warmup): mftk's" \
    "tokens/s is read from whole metrics windows after the warm-up" >&2
  exit 2
fi
prefix=$work/prefix   # the unpacked .debs
build=$work/build
started=$(date +%s)
problems=()

n=0
step() {
  n=$((n + 1))
  printf '\n== step %d: %s  [%ds]\n' "$n" "$1" "$(($(date +%s) - started))"
}
# Prints a command (as the shell would read it) and runs it, unless --dry-run.
cmd() {
  printf '  $ %s\n' "$1"
  ((dry)) || bash -c "set -euo pipefail; $1"
}
check() {  # a local fact: "ok"/"MISSING" line; a failure is collected, not fatal in --dry-run
  if eval "$2"; then printf '  ok: %s\n' "$1"; else printf '  PROBLEM: %s\n' "$1"; problems+=("$1"); fi
}

# --- 1. what this machine and the bundle hold --------------------------------
step "check the bundle, the scripts and (on the GPU machine) torch, the GPU and the compiler"
check "bundle $bundle has a MANIFEST" "[[ -f $bundle/MANIFEST ]]"
if [[ -f $bundle/MANIFEST ]]; then
  manifest_ok() {
    local bad=0
    while read -r folder package version file bytes sha; do
      [[ $folder == \#* ]] && continue
      if [[ ! -f $bundle/$file ]] || [[ $(stat -c %s "$bundle/$file") != "$bytes" ]] ||
        [[ $(sha256sum "$bundle/$file" | cut -d' ' -f1) != "$sha" ]]; then
        echo "    $file: missing or not as listed" >&2
        bad=1
      fi
    done < "$bundle/MANIFEST"
    return $bad
  }
  check "every .deb the MANIFEST lists is present with its size and sha256 ($(grep -vc '^#' "$bundle/MANIFEST") files, $(du -sb "$bundle" | cut -f1) bytes)" manifest_ok
  for need in libsentencepiece-dev libtomlplusplus-dev libfmt-dev libspdlog-dev libboost1.74-dev libjemalloc-dev libgtest-dev libcli11-dev nlohmann-json3-dev; do
    check "bundle carries $need" "grep -q ' $need ' $bundle/MANIFEST"
  done
fi
check "scripts/device-bundle.sh and bench/gpu_peer.py exist" "[[ -x $here/scripts/device-bundle.sh && -f $here/bench/gpu_peer.py ]]"
check "python3 is on PATH" "command -v python3 >/dev/null"
if ((!dry)); then
  check "Python torch imports and sees a GPU" \
    "python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'"
  check "a C++ compiler (c++ / g++) is on PATH (the bundle carries none)" "command -v c++ >/dev/null || command -v g++ >/dev/null"
  # Debian's libraries use the C++11 string ABI; a torch built with the old one cannot link with them.
  check "the torch uses the C++11 ABI (as Debian's libraries do)" \
    "python3 -c 'import torch, sys; sys.exit(0 if torch._C._GLIBCXX_USE_CXX11_ABI else 1)'"
  if ((${#problems[@]})); then
    printf 'device-check: stopping: %s\n' "${problems[@]}" >&2
    exit 1
  fi
fi
cmd "mkdir -p '$out' && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee '$out/gpu.txt'"
cmd "python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.utils.cmake_prefix_path)' | tee '$out/torch.txt'"

# --- 2. unpack the bundle -----------------------------------------------------
step "unpack the .debs into $prefix (dpkg -x; ar + tar where dpkg is missing)"
cmd "mkdir -p '$prefix' '$out' && for d in '$bundle'/debs/*.deb '$bundle'/tools/*.deb; do
    if command -v dpkg-deb >/dev/null; then dpkg-deb -x \"\$d\" '$prefix';
    else (cd '$prefix' && ar p \"\$d\" \$(ar t \"\$d\" | grep '^data.tar') | tar -x --use-compress-program='xz -d' 2>/dev/null ||
          ar p \"\$d\" \$(ar t \"\$d\" | grep '^data.tar') | tar -x --zstd); fi; done"
lib=$prefix/usr/lib/x86_64-linux-gnu
# Every later step sources this: the unpacked libraries and pkg-config files,
# torch's libraries, and the machine's CMake when it is 3.22 or newer, else
# the bundle's (it finds its modules relative to itself); the same for Ninja.
cmd "cat > '$work/env.sh' <<'EOF'
export LD_LIBRARY_PATH=$lib:\$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib:\${LD_LIBRARY_PATH:-}
export PKG_CONFIG_SYSROOT_DIR=$prefix PKG_CONFIG_LIBDIR=$lib/pkgconfig:$prefix/usr/share/pkgconfig
export PATH=\$PATH:$prefix/usr/bin
cmake_bin=\$(command -v cmake) && \$cmake_bin --version | awk 'NR==1{split(\$3,v,\".\"); exit !(v[1]>3 || (v[1]==3 && v[2]>=22))}' || cmake_bin=$prefix/usr/bin/cmake
ninja_bin=\$(command -v ninja || echo $prefix/usr/bin/ninja)
EOF"
env_line=". '$work/env.sh'"
cmd "$env_line; echo \"cmake: \$cmake_bin (\$(\$cmake_bin --version | head -1)), ninja: \$ninja_bin\"; pkgconf --cflags sentencepiece"

# --- 3. configure and build ---------------------------------------------------
step "configure against the Python torch's libtorch and build with all cores"
# torch's own TorchConfig.cmake wants the CUDA toolkit (nvcc and its headers)
# even for code that compiles no CUDA; pip machines often lack it. Then
# cmake/torch-pip/TorchConfig.cmake describes the same libraries from the
# wheel's files (no NCCL process group: one GPU needs none).
torch_cmake="\$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
configure="\$cmake_bin -S '$here' -B '$build' -G Ninja -DCMAKE_MAKE_PROGRAM=\$ninja_bin \
-DCMAKE_BUILD_TYPE=Release -DMFTK_BUILD_BENCH=OFF -DJEMALLOC_LIBRARY='$lib/libjemalloc.so' \
-DPKG_CONFIG_EXECUTABLE='$prefix/usr/bin/pkgconf'"
cmd "$env_line; $configure -DCMAKE_PREFIX_PATH=\"$torch_cmake;$prefix/usr\" > '$out/configure.log' 2>&1 ||
  { echo 'torch CMake package failed (no CUDA toolkit?); using cmake/torch-pip'; rm -rf '$build';
    $configure -DCMAKE_PREFIX_PATH='$prefix/usr' -DTorch_DIR='$here/cmake/torch-pip' -DMFTK_TORCH_PIP_ROOT=\"\$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')\" >> '$out/configure.log' 2>&1; }; tail -3 '$out/configure.log'"
cmd "$env_line; \$cmake_bin --build '$build' -j\$(nproc) > '$out/build.log' 2>&1 || { tail -40 '$out/build.log'; exit 1; }; tail -1 '$out/build.log'"

# --- 4. tests -----------------------------------------------------------------
step "tests: device resolution, and the generic kernels (the code a GPU runs) both ways"
tests="Device*:GenericKernels*:Nf4*:LinearCrossEntropy*:Optimizer*:MistralAttention*:MistralPacking*"
cmd "$env_line; cd '$build' && MFTK_THREADS=8 ./bin/mftk_tests --gtest_filter='$tests' > '$out/tests.log' 2>&1; tail -3 '$out/tests.log'"
cmd "$env_line; cd '$build' && MFTK_GENERIC_KERNELS=1 MFTK_THREADS=8 ./bin/mftk_tests --gtest_filter='$tests' > '$out/tests-generic.log' 2>&1; tail -3 '$out/tests-generic.log'"

# --- 5. a tiny run on the GPU ---------------------------------------------------
step "a tiny mftk run with device = \"cuda\" (weights, adapter, optimizer, batches on cuda:0)"
tiny=$work/tiny
cmd "$env_line; '$build/bin/mftk' init --preset tiny --layers 2 --out '$tiny/base' > '$out/tiny-init.log' 2>&1"
# The same fp32 run on the CPU too: the report compares their final losses (float rounding apart, equal).
for d in cuda cpu; do
  cmd "python3 '$here/scripts/device_check_data.py' data '$tiny' --docs 16 --words 120 && python3 '$here/scripts/device_check_data.py' recipe '$tiny' --device $d --fp32 --name $d --seq 128 --steps 4 --log-every 2 > '$tiny/$d.toml'"
done
cmd "$env_line; '$build/bin/mftk' run '$tiny/cuda.toml' > '$out/tiny-run.log' 2>&1; grep -E ') on cuda|done:' '$out/tiny-run.log'"
cmd "$env_line; '$build/bin/mftk' run '$tiny/cpu.toml' > '$out/tiny-run-cpu.log' 2>&1; grep -E 'done:' '$out/tiny-run-cpu.log'"

# --- 6. the benchmark -----------------------------------------------------------
step "benchmark: 7B-shape LoRA and QLoRA ($layers layers, seq $seq, batch $batch, $steps timed steps) vs transformers + PEFT"
big=$work/bench
# Mistral 7B's shape, fewer layers: with the bundle's Mistral tokenizer the
# real vocabulary (32000), else a trained one of 2000 (embeddings and head smaller).
if [[ -f $bundle/tokenizer/tokenizer.model.v1 ]]; then
  init_shape="--preset mistral-7b-v0.1 --tokenizer '$bundle/tokenizer/tokenizer.model.v1'"
else
  init_shape="--preset tiny --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8 --head-dim 128 --sliding-window 4096 --max-position 32768 --vocab 2000"
fi
cmd "$env_line; '$build/bin/mftk' init $init_shape --layers $layers --dtype bf16 --seed 1 --out '$big/base' > '$out/bench-init.log' 2>&1"
cmd "python3 '$here/scripts/device_check_data.py' data '$big' --docs $(((warmup + steps) * batch + 4)) --words $((seq * 2))"
for case in lora qlora; do
  cmd "python3 '$here/scripts/device_check_data.py' recipe '$big' --device cuda --seq $seq --batch $batch --steps $((warmup + steps)) --log-every $warmup $([[ $case == qlora ]] && echo --nf4) > '$big/$case.toml'"
  cmd "$env_line; python3 '$here/scripts/device_check_data.py' sample-gpu '$out/mftk-$case.mem' -- '$build/bin/mftk' run '$big/$case.toml' > '$out/mftk-$case.log' 2>&1"
  cmd "python3 '$here/scripts/device_check_data.py' sample-gpu '$out/peer-$case.mem' -- python3 '$here/bench/gpu_peer.py' '$big/base' --cases $case --seq $seq --batch $batch --steps $steps --warmup $warmup > '$out/peer-$case.jsonl' 2> '$out/peer-$case.log'"
done

# --- 7. one JSON, one table -----------------------------------------------------
step "collect: $out/device-check.json and the table"
cmd "python3 '$here/scripts/device_check_data.py' report '$out' --work '$work' --warmup $warmup --layers $layers --seq $seq --batch $batch"

if ((dry)); then
  printf '\ndevice-check --dry-run: %d steps shown; %d local problem(s)%s\n' "$n" "${#problems[@]}" \
    "$( ((${#problems[@]})) && printf ': %s;' "${problems[@]}")"
  ((${#problems[@]} == 0))
else
  printf '\ndevice-check: done in %ds\n' "$(($(date +%s) - started))"
fi
