//! Messages between the page and the inference worker, as JSON-shaped values (serde, tagged by `type`).
//! Byte payloads (images) travel as `Uint8Array`s.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::device::selfcheck::SelfCheck;
use crate::pipeline::cache::CacheConfig;

/// Page → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Open the GPU through burn and run the matmul self-check on it.
    SelfCheck {
        /// Side of the square matrices.
        size: usize,
    },
    /// Load the complete model `id` from the model store (IndexedDB, shared by the page and the worker) on the
    /// GPU. Progress comes as `reading` (bytes from storage) then `loading`; failures as an error with request
    /// `load_model`.
    LoadStored {
        /// The model's id in the store.
        id: String,
        /// GPU memory every edit on this model must fit, in bytes (`None`: no limit).
        #[serde(default)]
        gpu_memory: Option<u64>,
    },
    /// Keep a LoRA file (safetensors) under `name` for edits that enable it; checked against the model when one
    /// is loaded. Replaces an adapter of the same name.
    AddLora {
        /// The file name, the adapter's key.
        name: String,
        /// The file's bytes.
        bytes: ByteBuf,
    },
    /// Forget the LoRA `name`.
    RemoveLora {
        /// The adapter's key.
        name: String,
    },
    /// Run an edit on the loaded model.
    Edit(EditJob),
    /// Stop the edit `id` at the next step boundary.
    Cancel {
        /// The job to stop.
        id: u32,
    },
}

/// One edit, as the page asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditJob {
    /// Chosen by the page; every answer about this job carries it.
    pub id: u32,
    /// The instruction.
    pub prompt: String,
    /// Encoded reference images (PNG, JPEG, WebP), in order.
    pub images: Vec<ByteBuf>,
    /// Output width; with `height`, overrides the reference's aspect.
    pub width: Option<usize>,
    /// Output height.
    pub height: Option<usize>,
    /// Pixel area of the output and of the reference buckets.
    pub max_area: usize,
    /// Keep references at their own size instead of snapping to a Kontext bucket.
    pub keep_reference_size: bool,
    /// Denoising steps.
    pub steps: usize,
    /// Distilled guidance.
    pub guidance: f32,
    /// Seed of the noise.
    pub seed: u64,
    /// LoRA adapters (added with [`ToWorker::AddLora`]) to apply, with their strengths.
    #[serde(default)]
    pub loras: Vec<LoraUse>,
    /// Answer with the final packed latents as well as the image.
    #[serde(default)]
    pub return_latents: bool,
    /// The step cache (none by default).
    #[serde(default)]
    pub cache: CacheConfig,
    /// A masked edit of the first image.
    #[serde(default)]
    pub mask: Option<Box<MaskJob>>,
    /// Draw live previews on the result canvas (on by default).
    #[serde(default = "previews_by_default")]
    pub previews: bool,
}

fn previews_by_default() -> bool {
    true
}

/// The mask of a masked edit ([`crate::pipeline::mask::MaskedEdit`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskJob {
    /// The mask, encoded (PNG): white where the edit may change the image.
    pub image: ByteBuf,
    /// Its name in the result's recipe: a file name, or `painted`.
    pub name: String,
    /// How much of the schedule runs, in (0, 1].
    pub strength: f64,
    /// Pixels of margin around the mask when editing a crop of the image; `None` edits the whole image.
    #[serde(default)]
    pub crop_padding: Option<u32>,
    /// An encoded image that conditions the edit instead of the image being edited.
    #[serde(default)]
    pub reference: Option<ByteBuf>,
}

/// One LoRA adapter enabled for an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraUse {
    /// The name it was added under.
    pub name: String,
    /// 1.0: as trained; 0.5: half the effect; negative values invert it.
    pub strength: f32,
}

/// Worker → page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// The worker has loaded its wasm and accepts messages.
    Ready,
    /// Result of [`ToWorker::SelfCheck`].
    SelfCheck {
        /// What was computed and how far it was from the CPU.
        check: SelfCheck,
        /// Milliseconds from the request to the answer, GPU start-up included.
        millis: f64,
        /// How the result canvas is drawn on (`webgpu`, `2d`), when the page gave the worker one.
        #[serde(default)]
        display: Option<String>,
        /// The kernel path of each operation on the worker's device.
        #[serde(default)]
        kernels: Option<crate::kernels::report::KernelPaths>,
    },
    /// Measured progress of a load (`job` = None) or an edit.
    Progress {
        /// The edit, or `None` for a model load.
        job: Option<u32>,
        /// What is being done: `downloading`, `loading`, `applying LoRA adapters`, `encoding text`,
        /// `encoding references`, `denoising`, `decoding`.
        phase: String,
        /// Units done (bytes, files, layers or steps, per phase).
        done: u64,
        /// Units in the phase.
        total: u64,
        /// Whether the step just done reused the step cache (`denoising` only).
        #[serde(default)]
        reused: bool,
    },
    /// Answer to [`ToWorker::AddLora`].
    LoraAdded {
        /// The adapter's key.
        name: String,
        /// What it adapts ("23 layers, rank 4"), or that it is checked when a model is loaded.
        description: String,
    },
    /// Answer to [`ToWorker::AddLora`] for a file that is not a LoRA for the loaded model.
    LoraRejected {
        /// The adapter's key.
        name: String,
        /// Why, for the user.
        message: String,
    },
    /// Answer to [`ToWorker::RemoveLora`].
    LoraRemoved {
        /// The adapter's key.
        name: String,
    },
    /// The result canvas shows a preview of an edit's latents after `step` ([`crate::pipeline::preview`]).
    Preview {
        /// The edit.
        job: u32,
        /// Steps done.
        step: u64,
    },
    /// The model is loaded and ready for edits.
    Loaded {
        /// What was loaded (sizes, configuration).
        description: String,
        /// The worker's WebAssembly memory after the load, in bytes: it never shrinks, so this is its peak so far.
        #[serde(default)]
        heap_bytes: u64,
    },
    /// A finished edit.
    Result {
        /// The job.
        id: u32,
        /// The image as PNG.
        png: ByteBuf,
        /// The final packed latents `[tokens × 64]`, row-major, when the job asked for them.
        #[serde(default)]
        latents: Option<Vec<f32>>,
        /// The magnitude ratio of each step, when the job's cache calibrated ([`CacheConfig::Calibrate`]).
        #[serde(default)]
        mag_ratios: Option<Vec<f32>>,
        /// The seed used.
        seed: u64,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Milliseconds the edit took.
        millis: f64,
        /// Whether the result canvas shows the image.
        #[serde(default)]
        shown: bool,
        /// Buffers the edit read back to the CPU: the image for the PNG, the latents when asked for, and on the
        /// 2D canvas path one per preview.
        #[serde(default)]
        readbacks: u64,
        /// Of those, the ones read back during the denoising steps (0 with previews drawn by the GPU and no step
        /// cache that reads its measure back).
        #[serde(default)]
        step_readbacks: u64,
        /// Milliseconds of the denoising steps, each measured to the GPU queue's end (previews included).
        #[serde(default)]
        denoise_millis: f64,
    },
    /// The edit stopped on request.
    Cancelled {
        /// The job.
        id: u32,
    },
    /// A request failed; `message` is meant for the user.
    Error {
        /// The edit that failed, if the error belongs to one.
        #[serde(default)]
        job: Option<u32>,
        /// Which request failed: `self_check`, `load_model`, `edit`, or `worker` (the worker itself).
        #[serde(default)]
        request: String,
        /// What went wrong.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_type() {
        let json = serde_json::to_string(&ToWorker::SelfCheck { size: 64 }).unwrap();
        assert_eq!(json, r#"{"type":"self_check","size":64}"#);
        let back: FromWorker = serde_json::from_str(r#"{"type":"error","message":"no GPU"}"#).unwrap();
        assert_eq!(back, FromWorker::Error { job: None, request: String::new(), message: "no GPU".into() });
        let cancel: ToWorker = serde_json::from_str(r#"{"type":"cancel","id":3}"#).unwrap();
        assert_eq!(cancel, ToWorker::Cancel { id: 3 });
        let stored = serde_json::to_string(&ToWorker::LoadStored { id: "tiny-1".into(), gpu_memory: Some(1 << 30) });
        assert_eq!(stored.unwrap(), r#"{"type":"load_stored","id":"tiny-1","gpu_memory":1073741824}"#);
        let unlimited: ToWorker = serde_json::from_str(r#"{"type":"load_stored","id":"tiny-1"}"#).unwrap();
        assert_eq!(unlimited, ToWorker::LoadStored { id: "tiny-1".into(), gpu_memory: None });
    }
}
