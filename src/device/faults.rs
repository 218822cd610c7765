//! GPU errors that wgpu reports out of band: an allocation the driver refused (out of memory) or an operation
//! it rejected. cubecl's handler panics on them, which in a browser kills the worker; ours records the first one
//! so that the load or edit that caused it ends with an answer ([`check`]) and the device stays usable once the
//! model has released what it uploaded.
//!
//! wgpu hands these errors to the device's uncaptured-error handler: natively on the device thread while the
//! failing call runs, in a browser as a `GPUUncapturedErrorEvent` once the GPU process has answered, so
//! [`settle`] waits for the device before the last [`check`] of a load.

use std::sync::{Arc, Mutex};

use burn::tensor::Device;

/// What kind of failure the GPU reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// An allocation the driver (or the browser) could not satisfy.
    OutOfMemory,
    /// An operation the GPU API rejected (validation or internal error).
    Refused,
    /// The device stopped answering (lost: a driver reset, a GPU that went away).
    Lost,
}

/// The first GPU error since the last [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuFault {
    /// Out of memory, or refused.
    pub kind: FaultKind,
    /// wgpu's description.
    pub message: String,
    /// Errors reported after this one before it was taken (usually the consequences of the first).
    pub later: usize,
}

#[derive(Default)]
struct Log {
    first: Option<GpuFault>,
    /// Bytes of weights uploaded since [`inject_out_of_memory_after`] was called.
    uploaded: u64,
    /// Where an injected failure is due.
    inject_after: Option<u64>,
}

static LOG: Mutex<Log> = Mutex::new(Log { first: None, uploaded: 0, inject_after: None });

fn log() -> std::sync::MutexGuard<'static, Log> {
    LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record(kind: FaultKind, message: String) {
    let mut log = log();
    match &mut log.first {
        Some(first) => first.later += 1,
        None => log.first = Some(GpuFault { kind, message, later: 0 }),
    }
}

/// Replaces the uncaptured-error handler of the wgpu `device` (cubecl's panics) with the recorder.
pub(crate) fn watch(device: &burn::tensor::wgpu::wgpu::Device) {
    use burn::tensor::wgpu::wgpu::Error;
    device.on_uncaptured_error(Arc::new(|error: Error| match error {
        Error::OutOfMemory { source } => record(FaultKind::OutOfMemory, source.to_string()),
        Error::Validation { description, .. } | Error::Internal { description, .. } => {
            record(FaultKind::Refused, description)
        }
    }));
}

/// Takes the first GPU error recorded since the last call (natively after waiting for the work queued on
/// `device`, so that an error of that work is in); `None` on the CPU.
pub fn check(device: &Device) -> Option<GpuFault> {
    if !is_gpu(device) {
        return None;
    }
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(e) = device.sync() {
        record(FaultKind::Lost, format!("{e:?}"));
    }
    log().first.take()
}

/// Waits until the GPU has answered for everything queued on `device`, so that its errors have arrived
/// (in a browser they come as events, after the GPU process has run the commands). A device that can no longer
/// answer (lost) is an [`crate::Error::Readback`], a device failure.
pub async fn settle(device: &Device) -> crate::Result<()> {
    if !is_gpu(device) {
        return Ok(());
    }
    // A readback is a full round trip to the GPU, ordered after every command queued before it.
    let probe = burn::tensor::Tensor::<1>::zeros([1], device);
    crate::device::read_f32(probe).await.map(|_| ())
}

fn is_gpu(device: &Device) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
}

/// Counts `bytes` of weights uploaded to `device`; records an injected out-of-memory failure when they pass
/// what [`inject_out_of_memory_after`] set.
pub fn note_upload(device: &Device, bytes: u64) {
    if !is_gpu(device) {
        return;
    }
    let mut log = log();
    let Some(after) = log.inject_after else { return };
    log.uploaded += bytes;
    if log.uploaded > after {
        log.inject_after = None;
        drop(log);
        record(FaultKind::OutOfMemory, format!("injected after {after} bytes of weights"));
    }
}

/// Environment variable read by the `kontext` CLI: `KONTEXT_INJECT_GPU_OOM_AFTER=BYTES` calls
/// [`inject_out_of_memory_after`] with it, to test the answer to a GPU out of memory end to end.
pub const INJECT_OUT_OF_MEMORY_ENV: &str = "KONTEXT_INJECT_GPU_OOM_AFTER";

/// Makes the GPU report an allocation failure once more than `bytes` of weights have been uploaded from now
/// on (`None`: never), as a driver that runs out of memory in the middle of a load does. For tests.
pub fn inject_out_of_memory_after(bytes: Option<u64>) {
    let mut log = log();
    log.inject_after = bytes;
    log.uploaded = 0;
}
