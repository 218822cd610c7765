// The worker's device request, beyond wgpu's. wgpu asks the browser only for the features in its own table, which
// has neither `subgroups` nor Chromium's `chromium-experimental-subgroup-matrix`; the worker therefore adds them
// where the adapter has them, and records what the device was granted for src/device/browser_grant.rs:
// - `subgroups` wherever the adapter has them (Chrome 134 on): the plain kernels' subgroup layouts (the flash
//   attention's), recorded in globalThis.kontextSubgroups;
// - subgroup matrices where the adapter has what the `coop` kernels need (src/kernels/coop_dialect.rs), recorded
//   in globalThis.kontextSubgroupMatrix.

export const FEATURE = 'chromium-experimental-subgroup-matrix';
// Where the grants are recorded (src/device/browser_grant.rs: SUBGROUPS_GLOBAL, MATRIX_GLOBAL).
export const SUBGROUPS_GLOBAL = 'kontextSubgroups';
export const MATRIX_GLOBAL = 'kontextSubgroupMatrix';
// What the coop kernels need (src/device/mod.rs: COOP_SUBGROUP_MAX, COOP_WORKGROUP_BYTES).
const SUBGROUP_MAX = 64;
const WORKGROUP_BYTES = 32768;

// The subgroup sizes of `adapter`, where it has `subgroups` and says their sizes; else null.
export function subgroupSupport(adapter) {
  if (!adapter.features.has('subgroups')) return null;
  const subgroupMinSize = adapter.info?.subgroupMinSize ?? 0;
  const subgroupMaxSize = adapter.info?.subgroupMaxSize ?? 0;
  if (!(subgroupMinSize > 0 && subgroupMaxSize >= subgroupMinSize)) return null;
  return { subgroupMinSize, subgroupMaxSize };
}

// What the coop kernels would run on with `adapter`: the side of its square products of f16 inputs and f32
// results (16 where it has them, else 8), its subgroup sizes and every product it offers; null where it lacks
// subgroup matrices, subgroups, shader-f16, subgroups of at most 64 or 32 KiB of workgroup memory.
export function subgroupMatrixSupport(adapter) {
  const subgroups = subgroupSupport(adapter);
  if (!subgroups || ![FEATURE, 'shader-f16'].every((feature) => adapter.features.has(feature))) return null;
  if (!(subgroups.subgroupMaxSize <= SUBGROUP_MAX)) return null;
  if (!((adapter.limits?.maxComputeWorkgroupStorageSize ?? 0) >= WORKGROUP_BYTES)) return null;
  const configs = Array.from(adapter.info.subgroupMatrixConfigs ?? []);
  const square = (side) => configs.some((c) => c.M === side && c.N === side && c.K === side
    && c.componentType === 'f16' && c.resultComponentType === 'f32');
  const fragment = [16, 8].find(square);
  if (!fragment) return null;
  const names = configs.map((c) => `${c.M}x${c.N}x${c.K} ${c.componentType}→${c.resultComponentType}`);
  return { fragment, ...subgroups, configs: names };
}

// Makes every device requested in `scope` also ask for `subgroups` where its adapter has subgroupSupport, and for
// subgroup matrices, shader-f16 and 32 KiB of workgroup memory where it has subgroupMatrixSupport; records what a
// granted device got in scope[SUBGROUPS_GLOBAL] and scope[MATRIX_GLOBAL]. A request the browser refuses with them
// is made again as it was asked.
export function extendDeviceRequests(scope = globalThis) {
  const prototype = scope.GPUAdapter?.prototype;
  if (!prototype || prototype.requestDevice.kontextDeviceRequest) return;
  const requestDevice = prototype.requestDevice;
  const wrapped = async function (descriptor = {}) {
    const subgroups = subgroupSupport(this);
    if (!subgroups) return requestDevice.call(this, descriptor);
    const matrices = subgroupMatrixSupport(this);
    const added = matrices ? ['subgroups', FEATURE, 'shader-f16'] : ['subgroups'];
    const requiredFeatures = [...new Set([...Array.from(descriptor.requiredFeatures ?? []), ...added])];
    const requiredLimits = { ...(descriptor.requiredLimits ?? {}) };
    if (matrices) {
      requiredLimits.maxComputeWorkgroupStorageSize =
        Math.max(requiredLimits.maxComputeWorkgroupStorageSize ?? 0, WORKGROUP_BYTES);
    }
    let device;
    try {
      device = await requestDevice.call(this, { ...descriptor, requiredFeatures, requiredLimits });
    } catch {
      return requestDevice.call(this, descriptor);
    }
    if (device.features.has('subgroups')) {
      scope[SUBGROUPS_GLOBAL] = subgroups;
      if (matrices && device.features.has(FEATURE)) scope[MATRIX_GLOBAL] = matrices;
    }
    return device;
  };
  wrapped.kontextDeviceRequest = true;
  prototype.requestDevice = wrapped;
}
