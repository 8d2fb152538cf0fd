#!/usr/bin/env bash
# Every figure of docs/benchmarks.md's "One GPU" sections, on one CUDA GPU, into OUT_DIR:
# the GPU tests, the linear layers (bench_linear), decode and prefill of both shapes
# (bench_decode), the MoE paths, and `pypto serve` with each shape under bench_serve_load.
# Each step has its own time limit, so one that hangs does not take the rest with it.
#
# Usage: scripts/bench_gpu.sh OUT_DIR [STEP ...]
#   steps: tests linear decode moe-decode moe-paths serve-dense serve-moe (default: all)
# Needs the package installed (pip install -e .) in an environment whose torch sees CUDA.
# PLATFORM=cpu DENSE=small-dense MOE=tiny-moe try the serve steps on a CPU.
set -uo pipefail
out=${1:?usage: scripts/bench_gpu.sh OUT_DIR [STEP ...]}
shift
mkdir -p "$out"
steps=${*:-tests linear decode moe-decode moe-paths serve-dense serve-moe}
export PYTHONUNBUFFERED=1
# NVLink multicast stays off in every process started here (the device machines need it)
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0} TORCH_SYMM_MEM_DISABLE_MULTICAST=${TORCH_SYMM_MEM_DISABLE_MULTICAST:-1}
export NVSHMEM_DISABLE_NVLS=${NVSHMEM_DISABLE_NVLS:-1}
cd "$(dirname "$0")/.."
platform=${PLATFORM:-cuda} dense=${DENSE:-dense-1.5b-shape} moe=${MOE:-moe-1b-7b-shape}
export out platform

# waits up to 4 minutes for a replica behind /health (no heredoc: serve is exported)
ready='
import sys, time, httpx
for _ in range(480):
    try:
        if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.5)
sys.exit(1)
'
export ready

# serve PROFILE PORT NAME LOAD_ARGS...: pypto serve in the background, bench_serve_load
# against it once /health says a replica is ready, then SIGINT (a drain) and the server log
serve() {
    local profile=$1 port=$2 name=$3 cfg
    shift 3
    cfg=$(mktemp --suffix .yaml)
    printf 'serve:\n  max_num_seqs: 128\n  max_num_batched_tokens: 2048\ncluster:\n  platform: %s\n' \
        "$platform" > "$cfg"
    pypto serve --config "$cfg" --model-profile "$profile" --port "$port" > "$out/$name-server.log" 2>&1 &
    local pid=$!
    if ! python3 -c "$ready" "$port"; then
        echo "pypto serve did not get ready; its log:"; cat "$out/$name-server.log"
        kill "$pid" 2>/dev/null; return 1
    fi
    local L=scripts/bench_serve_load.py status=0
    for args in "$@"; do
        # shellcheck disable=SC2086  # each entry is one argument list
        python3 $L --url "http://127.0.0.1:$port" --model "$profile" $args || status=$?
    done
    kill -INT "$pid"; wait "$pid"
    grep -E "KV pool|CUDA graphs|eager" "$out/$name-server.log"
    return $status
}
export -f serve

run() {  # run NAME SECONDS COMMAND...: the command's output to the terminal and OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    if [ "$1" = serve ]; then  # a shell function: timeout runs it in a bash of its own
        timeout "$limit" bash -c 'serve "$@"' serve "${@:2}" 2>&1 | tee "$out/$name.log"
    else
        timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    fi
}

for step in $steps; do
    case $step in
        tests) run gpu-tests 300 python3 -m pytest tests/gpu -q -p no:cacheprovider ;;
        linear) run linear 300 python3 scripts/bench_linear.py --sweep --json "$out/linear.json" ;;
        decode) run decode 400 python3 scripts/bench_decode.py --accuracy 32 --profile \
                    --json "$out/decode.json" ;;
        moe-decode) run moe-decode 400 python3 scripts/bench_decode.py --model moe-1b-7b-shape \
                        --batches 1,8,32 --prefill 512 --iters 10 --modes eager,graphs \
                        --burst 4x128 --json "$out/moe-decode.json" ;;
        moe-paths) run moe-paths 200 python3 scripts/bench_moe_paths.py --device cuda \
                       --profiles moe-1b-7b-shape ;;
        serve-dense) run serve-dense 600 serve "$dense" 8123 dense \
                         "--concurrency 1,8,32,128 --requests 64 --prompt-tokens 128 --max-tokens 64 --json $out/serve-dense.json" \
                         "--concurrency 32 --requests 128 --shared-prefixes 4 --prefix-tokens 512 --prompt-tokens 64 --max-tokens 32 --json $out/serve-dense-shared.json" \
                         "--concurrency 1,8 --requests 32 --prompt-spread 0.5 --max-tokens 32 --json $out/serve-dense-varied.json" ;;
        serve-moe) run serve-moe 600 serve "$moe" 8124 moe \
                       "--concurrency 1,8,32,128 --requests 32 --max-tokens 32 --json $out/serve-moe.json" ;;
        *) echo "unknown step '$step'; steps: tests linear decode moe-decode moe-paths serve-dense serve-moe"; exit 2 ;;
    esac
done
