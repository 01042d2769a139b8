#!/usr/bin/env bash
# mapper as a deployment-CI step: compile the model, gate it on the budgets in mapper.yaml
# (or --budget flags in MAPPER_FLAGS), diff its plan against the main branch's, and leave the
# report, the plan and a Markdown diff for the pipeline to upload or post.
#
#   MODEL=model.onnx HW=a100 BASE_MODEL=base.onnx examples/ci/mapper-ci.sh
#
# Inputs (environment):
#   MODEL          the model this change deploys (required)
#   HW             hardware name or YAML file (default: a100)
#   OUT            output directory (default: mapper-out; replaced only if mapper wrote it)
#   BASE_MODEL     the main branch's model: compiled with the same settings for the diff
#   BASE_PLAN      or the main branch's plan.json, if the pipeline kept it (wins over BASE_MODEL)
#   FAIL_ON        the diff's regression thresholds (default: latency+5%,device_memory+0%,fits)
#   MAPPER_FLAGS   more compile flags, e.g. "--dim seq=128 --budget latency=5ms"
#   MAPPER         the mapper executable (default: mapper on PATH)
# Exit status: 0 all gates pass; 4 a budget or a regression threshold failed; otherwise
# mapper's own (2 bad input, 3 infeasible, 1 a bug). Every file is written before it exits.
set -uo pipefail

MODEL=${MODEL:?set MODEL to the .onnx file to deploy}
HW=${HW:-a100}
OUT=${OUT:-mapper-out}
FAIL_ON=${FAIL_ON:-latency+5%,device_memory+0%,fits}
MAPPER=${MAPPER:-mapper}
read -r -a FLAGS <<< "${MAPPER_FLAGS:-}"

status=0
worst() {  # keep the most serious exit status: anything but 0 and 4 wins over 4
    local code=$1
    if [ "$code" -ne 0 ] && { [ "$status" -eq 0 ] || [ "$status" -eq 4 ]; }; then
        status=$code
    fi
}

echo "::group::mapper compile $MODEL --hw $HW"
"$MAPPER" compile "$MODEL" --hw "$HW" -o "$OUT" "${FLAGS[@]}"
compiled=$?
echo "::endgroup::"
worst "$compiled"
if [ "$compiled" -ne 0 ] && [ "$compiled" -ne 4 ]; then
    exit "$status"  # no plan to diff: mapper said why
fi

base_plan=${BASE_PLAN:-}
if [ -z "$base_plan" ] && [ -n "${BASE_MODEL:-}" ]; then
    # Budgets judge this change only: the baseline is compiled for its plan, not gated.
    "$MAPPER" compile "$BASE_MODEL" --hw "$HW" -o "$OUT-base" "${FLAGS[@]}" >/dev/null
    based=$?
    if [ "$based" -ne 0 ] && [ "$based" -ne 4 ]; then
        echo "mapper-ci: the baseline model did not compile (exit $based)" >&2
        worst "$based"
        exit "$status"
    fi
    base_plan="$OUT-base/plan.json"
fi
if [ -n "$base_plan" ]; then
    "$MAPPER" diff "$base_plan" "$OUT/plan.json" --fail-on "$FAIL_ON"
    worst $?
    "$MAPPER" diff "$base_plan" "$OUT/plan.json" --fail-on "$FAIL_ON" --format md \
        -o "$OUT.diff.md" 2>/dev/null
fi
exit "$status"
