// The sum of `value` over the LANES invocations of each row of a workgroup of ROWS rows × LANES lanes, invocation
// `local` = row · LANES + lane. The including kernel's host prepends LANES, ROWS (LANES · ROWS = 256) and CHUNK
// (LANES a multiple of it). Called by the whole workgroup, in uniform control flow. Two barriers, whatever LANES:
// LANES / CHUNK lanes of each row add CHUNK partials each, then every lane adds those. A call's reads all come
// before the next call's second barrier, so calls may follow each other.
var<workgroup> partial: array<f32, 256>;
var<workgroup> chunk_sums: array<f32, 256 / CHUNK>;

fn row_sum(value: f32, local: u32) -> f32 {
    let lane = local % LANES;
    let chunks = LANES / CHUNK;
    let first_chunk = (local / LANES) * chunks;
    partial[local] = value;
    workgroupBarrier();
    if (lane < chunks) {
        var sum = 0.0;
        for (var j = 0u; j < CHUNK; j = j + 1u) {
            sum = sum + partial[local - lane + lane * CHUNK + j];
        }
        chunk_sums[first_chunk + lane] = sum;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var c = 0u; c < chunks; c = c + 1u) {
        total = total + chunk_sums[first_chunk + c];
    }
    return total;
}
