# Sourced by test.sh and benchmarks/gpu_check.sh: `stage NAME COMMAND...` runs one stage and
# prints how long it took.
stage() {
    local name="$1"; shift
    local t0=$SECONDS
    echo "== $name"
    "$@"
    echo "== $name: $((SECONDS - t0)) s"
}
