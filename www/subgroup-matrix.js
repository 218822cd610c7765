// Chromium's subgroup matrices for the `coop` kernels (src/kernels/coop_dialect.rs). wgpu asks the browser only
// for the features in its own table, which has neither `chromium-experimental-subgroup-matrix` nor `subgroups`;
// the worker therefore adds them to its device request where the adapter has what the kernels need, and records
// the grant in globalThis.kontextSubgroupMatrix, which src/device/subgroup_matrix.rs reads.

export const FEATURE = 'chromium-experimental-subgroup-matrix';
// Where the grant is recorded (src/device/subgroup_matrix.rs: GLOBAL).
export const GLOBAL = 'kontextSubgroupMatrix';
// What the kernels need (src/device/mod.rs: COOP_SUBGROUP_MAX, COOP_WORKGROUP_BYTES).
const SUBGROUP_MAX = 64;
const WORKGROUP_BYTES = 32768;

// What the coop kernels would run on with `adapter`: the side of its square products of f16 inputs and f32
// results (16 where it has them, else 8), its subgroup sizes and every product it offers; null where it lacks
// subgroup matrices, subgroups, shader-f16, subgroups of at most 64 or 32 KiB of workgroup memory.
export function subgroupMatrixSupport(adapter) {
  const features = adapter.features;
  if (![FEATURE, 'subgroups', 'shader-f16'].every((feature) => features.has(feature))) return null;
  const info = adapter.info ?? {};
  const subgroupMinSize = info.subgroupMinSize ?? 0;
  const subgroupMaxSize = info.subgroupMaxSize ?? 0;
  if (!(subgroupMaxSize > 0 && subgroupMaxSize <= SUBGROUP_MAX)) return null;
  if (!((adapter.limits?.maxComputeWorkgroupStorageSize ?? 0) >= WORKGROUP_BYTES)) return null;
  const configs = Array.from(info.subgroupMatrixConfigs ?? []);
  const square = (side) => configs.some((c) => c.M === side && c.N === side && c.K === side
    && c.componentType === 'f16' && c.resultComponentType === 'f32');
  const fragment = [16, 8].find(square);
  if (!fragment) return null;
  const names = configs.map((c) => `${c.M}x${c.N}x${c.K} ${c.componentType}→${c.resultComponentType}`);
  return { fragment, subgroupMinSize, subgroupMaxSize, configs: names };
}

// Makes every device requested in `scope` from an adapter with subgroupMatrixSupport also ask for subgroup
// matrices, subgroups, shader-f16 and 32 KiB of workgroup memory, and records what a granted device got in
// scope[GLOBAL]. A request the browser refuses with them is made again as it was asked.
export function requestSubgroupMatrices(scope = globalThis) {
  const prototype = scope.GPUAdapter?.prototype;
  if (!prototype || prototype.requestDevice.kontextSubgroupMatrix) return;
  const requestDevice = prototype.requestDevice;
  const wrapped = async function (descriptor = {}) {
    const support = subgroupMatrixSupport(this);
    if (!support) return requestDevice.call(this, descriptor);
    const asked = Array.from(descriptor.requiredFeatures ?? []);
    const requiredFeatures = [...new Set([...asked, FEATURE, 'subgroups', 'shader-f16'])];
    const requiredLimits = { ...(descriptor.requiredLimits ?? {}) };
    requiredLimits.maxComputeWorkgroupStorageSize =
      Math.max(requiredLimits.maxComputeWorkgroupStorageSize ?? 0, WORKGROUP_BYTES);
    let device;
    try {
      device = await requestDevice.call(this, { ...descriptor, requiredFeatures, requiredLimits });
    } catch {
      return requestDevice.call(this, descriptor);
    }
    if (device.features.has(FEATURE) && device.features.has('subgroups')) scope[GLOBAL] = support;
    return device;
  };
  wrapped.kontextSubgroupMatrix = true;
  prototype.requestDevice = wrapped;
}
