// The sum of every invocation's `value` over a workgroup of THREADS invocations (the including shader defines
// THREADS); called by the whole workgroup, in uniform control flow.
var<workgroup> partial: array<f32, THREADS>;

fn workgroup_sum(value: f32, lane: u32) -> f32 {
    partial[lane] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            partial[lane] = partial[lane] + partial[lane + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}
