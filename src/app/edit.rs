//! The editor's inputs and intents, without rendering: the references (read from files, drops, pastes, history
//! entries or a result), the prompt, the Draft/Quality presets, the output shape and size arithmetic, steps,
//! guidance and seed ([`EditForm`]); building the edit request sent to the worker ([`request`]), starting and
//! cancelling it, re-running a history entry, and keeping finished results in [`super::history`].

use leptos::prelude::*;
use leptos::task::spawn_local;
use serde_bytes::ByteBuf;
use wasm_bindgen_futures::JsFuture;

use super::history::{HistoryEntry, HistoryMask, Rerun};
use super::loras::LoraEntry;
use super::masking::MaskForm;
use super::{AppState, JobState, ModelState, send};
use crate::pipeline::cache::CacheConfig;
use crate::pipeline::size::{DEFAULT_MAX_AREA, Resize, output_size, reference_size};
use crate::web::protocol::{EditJob, LoraUse, MaskJob, ToWorker};
use crate::web::stage::{Showable, StageView};

/// Most references one edit takes.
pub const MAX_REFERENCES: usize = 4;

/// A reference the user added: encoded bytes, a thumbnail URL and its pixel size (from the header).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// File name, shown as the thumbnail's alt text and in the history.
    pub name: String,
    /// The encoded image (PNG, JPEG or WebP), as sent to the worker.
    pub bytes: Vec<u8>,
    /// Object URL of the image, for its thumbnail.
    pub thumbnail: String,
    /// Width and height from the image header; `None` when the header could not be read.
    pub size: Option<(usize, usize)>,
}

impl Reference {
    /// What a mask painted over this reference belongs to: its thumbnail URL (unique per reference) and its size.
    pub fn mask_owner(&self) -> Option<(&str, (usize, usize))> {
        Some((self.thumbnail.as_str(), self.size?))
    }
}

/// A named pair of steps and area (side of the same-area square).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// Shown on the button and used in element ids (lower case).
    pub name: &'static str,
    /// Denoising steps.
    pub steps: usize,
    /// Side of the same-area square, pixels.
    pub side: usize,
}

/// Draft: few steps at a quarter of the area (a rough look, not a fast mode of the model); Quality: the reference
/// pipeline's 28 steps at 1024².
pub const PRESETS: [Preset; 2] =
    [Preset { name: "Draft", steps: 8, side: 512 }, Preset { name: "Quality", steps: 28, side: 1024 }];

/// What a level of the "Speed" control does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SpeedLevel {
    /// Every step runs every block.
    Off,
    /// First-Block-Cache at this threshold.
    FirstBlockCache(f64),
    /// MagCache at [`MAG_THRESHOLD`] (diffusers' default, with its defaults for the rest) and the loaded model's
    /// ratios as calibrated in this browser.
    MagCache,
    /// Every step runs; the model's MagCache ratios are measured and kept.
    Calibrate,
}

/// A level of the "Speed" control: the step cache it turns on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Shown in the control.
    pub name: &'static str,
    /// The cache.
    pub level: SpeedLevel,
}

/// MagCache's threshold in the Speed control: diffusers' default.
pub const MAG_THRESHOLD: f64 = 0.06;

impl Speed {
    /// The step cache of this level, `None` for MagCache without `mag_ratios`.
    pub fn cache(&self, mag_ratios: Option<&[f32]>) -> Option<CacheConfig> {
        match self.level {
            SpeedLevel::Off => Some(CacheConfig::None),
            SpeedLevel::FirstBlockCache(threshold) => Some(CacheConfig::Fbc { threshold }),
            SpeedLevel::MagCache => mag_ratios.map(|ratios| {
                CacheConfig::parse(&format!("mag:{MAG_THRESHOLD}"))
                    .expect("a valid MagCache setting")
                    .with_ratios(ratios.to_vec())
            }),
            SpeedLevel::Calibrate => Some(CacheConfig::Calibrate),
        }
    }

    /// The control's text, naming the threshold.
    pub fn label(&self) -> String {
        match self.level {
            SpeedLevel::Off => format!("{} · every step runs every block", self.name),
            SpeedLevel::FirstBlockCache(threshold) => format!("{} · First-Block-Cache {threshold}", self.name),
            SpeedLevel::MagCache => format!("{} {MAG_THRESHOLD} · this model's calibrated ratios", self.name),
            SpeedLevel::Calibrate => format!("{} · every step runs and measures this model's ratios", self.name),
        }
    }

    /// The level of [`SPEEDS`] that runs `cache` (Off when none does).
    pub fn index_of(cache: &CacheConfig) -> usize {
        SPEEDS
            .iter()
            .position(|speed| match (speed.level, cache) {
                (SpeedLevel::Off, CacheConfig::None) => true,
                (SpeedLevel::FirstBlockCache(a), CacheConfig::Fbc { threshold: b }) => a == *b,
                (SpeedLevel::MagCache, CacheConfig::Mag { .. }) => true,
                (SpeedLevel::Calibrate, CacheConfig::Calibrate) => true,
                _ => false,
            })
            .unwrap_or(0)
    }
}

/// Off; First-Block-Cache at 0.08 and 0.12, after ComfyUI-nunchaku's guidance for Flux's `cache_threshold`
/// (values up to 0.12 give increasing speed with minor quality loss, above it the loss becomes noticeable; 0.12
/// is nunchaku's default); MagCache with the ratios a calibrating edit measured on the loaded model; and that
/// calibration.
pub const SPEEDS: [Speed; 5] = [
    Speed { name: "Off", level: SpeedLevel::Off },
    Speed { name: "Fast", level: SpeedLevel::FirstBlockCache(0.08) },
    Speed { name: "Faster", level: SpeedLevel::FirstBlockCache(0.12) },
    Speed { name: "MagCache", level: SpeedLevel::MagCache },
    Speed { name: "Calibrate MagCache", level: SpeedLevel::Calibrate },
];

/// The name of the preset with these steps and side, or `"custom"` when none has them.
pub fn preset_name(steps: usize, side: usize) -> &'static str {
    PRESETS.iter().find(|p| p.steps == steps && p.side == side).map_or("custom", |p| p.name)
}

/// Width and height from an image header, without decoding the pixels.
fn header_size(bytes: &[u8]) -> Option<(usize, usize)> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().ok()?;
    let (w, h) = reader.into_dimensions().ok()?;
    Some((w as usize, h as usize))
}

/// What the worker is asked for: explicit `(width, height)` or none (the first reference's aspect), and the area.
/// `aspect` indexes [`ASPECTS`], or is [`CUSTOM`] for `custom` (snapped to ×16).
pub fn requested_size(
    aspect: usize,
    side: usize,
    custom: (usize, usize),
    has_reference: bool,
) -> (Option<(usize, usize)>, usize) {
    if aspect == CUSTOM {
        let (w, h) = (snap(custom.0), snap(custom.1));
        return (Some((w, h)), w * h);
    }
    let area = side * side;
    let explicit = match ASPECTS.get(aspect).and_then(|a| a.1) {
        Some(ratio) => Some(preset_size(ratio, area)),
        None if !has_reference => Some((side, side)),
        None => None,
    };
    (explicit, area.min(DEFAULT_MAX_AREA * 4))
}

/// The text under the shape choice: the output size in pixels, or why there is none. `first` is the first
/// reference's header size (`Some(None)`: a reference whose header could not be read), `None` without references.
pub fn describe_output(
    aspect: usize,
    side: usize,
    custom: (usize, usize),
    first: Option<Option<(usize, usize)>>,
) -> String {
    let (size, max_area) = requested_size(aspect, side, custom, first.is_some());
    match (size, first) {
        (None, Some(None)) => "output: the first reference's aspect".to_string(),
        (size, first) => match output_size(size, first.flatten(), max_area) {
            Ok((w, h)) => format!("output: {w}×{h} px"),
            Err(e) => e.to_string(),
        },
    }
}

/// The shape choice after [`ASPECTS`]: a width and height of the user's.
pub const CUSTOM: usize = ASPECTS.len();

/// Pixels snapped to the ×16 grid the model works on, within 64–2048.
pub fn snap(pixels: usize) -> usize {
    pixels.clamp(64, 2048) / 16 * 16
}

/// Output size choices: the first reference's aspect, or a preset ratio, at the chosen area.
pub const ASPECTS: [(&str, Option<(f64, f64)>); 7] = [
    ("match the first reference", None),
    ("1:1", Some((1.0, 1.0))),
    ("4:3", Some((4.0, 3.0))),
    ("3:4", Some((3.0, 4.0))),
    ("16:9", Some((16.0, 9.0))),
    ("9:16", Some((9.0, 16.0))),
    ("21:9", Some((21.0, 9.0))),
];

/// `(width, height)` of `ratio` at `area`, snapped to multiples of 16.
pub fn preset_size(ratio: (f64, f64), area: usize) -> (usize, usize) {
    let aspect = ratio.0 / ratio.1;
    let w = ((area as f64 * aspect).sqrt().round() as usize) / 16 * 16;
    let h = ((area as f64 / aspect).sqrt().round() as usize) / 16 * 16;
    (w.max(16), h.max(16))
}

/// Image types the references accept.
pub const IMAGE_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];

/// The files of a file input, a drop or a paste, in order.
pub fn file_list(list: &web_sys::FileList) -> Vec<web_sys::File> {
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

/// The files among `files` whose type is one of [`IMAGE_TYPES`].
pub fn images(files: Vec<web_sys::File>) -> Vec<web_sys::File> {
    files.into_iter().filter(|f| IMAGE_TYPES.contains(&f.type_().as_str())).collect()
}

/// Reads a file the user picked, dropped or pasted into a reference; refuses types not in [`IMAGE_TYPES`].
pub async fn read_file(file: web_sys::File) -> Result<Reference, String> {
    if !IMAGE_TYPES.contains(&file.type_().as_str()) {
        return Err(format!("{} is not a PNG, JPEG or WebP image", file.name()));
    }
    let buffer = JsFuture::from(file.array_buffer()).await.map_err(crate::store::js::describe)?;
    let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
    let thumbnail = web_sys::Url::create_object_url_with_blob(&file).map_err(crate::store::js::describe)?;
    let size = header_size(&bytes);
    Ok(Reference { name: file.name(), bytes, thumbnail, size })
}

/// A reference from stored bytes (a history entry's).
pub fn reference_from_bytes(name: String, bytes: Vec<u8>) -> Result<Reference, String> {
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes.as_slice()));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(crate::store::js::describe)?;
    let thumbnail = web_sys::Url::create_object_url_with_blob(&blob).map_err(crate::store::js::describe)?;
    let size = header_size(&bytes);
    Ok(Reference { name, bytes, thumbnail, size })
}

impl Reference {
    /// A finished result as a reference ("use as reference"): its PNG, its object URL as the thumbnail.
    pub fn from_result(seed: u64, png: &[u8], url: String, width: usize, height: usize) -> Self {
        Reference {
            name: format!("result {seed}.png"),
            bytes: png.to_vec(),
            thumbnail: url,
            size: Some((width, height)),
        }
    }
}

/// The job in flight, kept to store it in the history when it finishes.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The history entry, its result facts (id, size, seed, time, model) filled in when the job is done.
    pub entry: HistoryEntry,
    /// The references' names and bytes, in order.
    pub references: Vec<(String, Vec<u8>)>,
    /// The mask's PNG, for a masked edit.
    pub mask: Option<Vec<u8>>,
}

/// The form's settings, read once when an edit starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The instruction.
    pub prompt: String,
    /// Index of [`ASPECTS`], or [`CUSTOM`].
    pub aspect: usize,
    /// Side of the same-area square, pixels.
    pub side: usize,
    /// Width and height for [`CUSTOM`].
    pub custom: (usize, usize),
    /// Denoising steps (at least one is asked for).
    pub steps: usize,
    /// Distilled guidance.
    pub guidance: f32,
    /// Index of [`SPEEDS`].
    pub speed: usize,
    /// The loaded model's MagCache ratios, where calibrated.
    pub mag_ratios: Option<Vec<f32>>,
}

/// The edit request for the worker and the history entry it will make, for job `id` with `seed`. A masked edit
/// keeps the size of its image (the first reference, bucketed at the chosen area).
pub fn request(
    id: u32,
    settings: &Settings,
    seed: u64,
    references: &[Reference],
    loras: Vec<LoraUse>,
    mask: Option<MaskJob>,
    mask_reference: Option<usize>,
) -> (EditJob, Pending) {
    let (size, max_area) = match &mask {
        Some(_) => (None, (settings.side * settings.side).min(DEFAULT_MAX_AREA * 4)),
        None => requested_size(settings.aspect, settings.side, settings.custom, !references.is_empty()),
    };
    // A masked edit's conditioning reference goes as the mask's `reference`, not among the images.
    let mask_reference = mask_reference.filter(|&i| mask.is_some() && i > 0 && i < references.len());
    let mask = mask
        .map(|mask| MaskJob { reference: mask_reference.map(|i| ByteBuf::from(references[i].bytes.clone())), ..mask });
    let job = EditJob {
        id,
        prompt: settings.prompt.clone(),
        images: references
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mask_reference)
            .map(|(_, r)| ByteBuf::from(r.bytes.clone()))
            .collect(),
        width: size.map(|s| s.0),
        height: size.map(|s| s.1),
        max_area,
        keep_reference_size: false,
        steps: settings.steps.max(1),
        guidance: settings.guidance,
        seed,
        loras,
        return_latents: false,
        cache: SPEEDS
            .get(settings.speed)
            .and_then(|speed| speed.cache(settings.mag_ratios.as_deref()))
            .unwrap_or(CacheConfig::None),
        mask: mask.map(Box::new),
        previews: true,
    };
    let pending = Pending {
        entry: HistoryEntry {
            id: 0,
            prompt: job.prompt.clone(),
            width: 0,
            height: 0,
            aspect: settings.aspect,
            side: settings.side,
            steps: job.steps,
            guidance: job.guidance,
            seed,
            loras: job.loras.iter().map(|l| (l.name.clone(), l.strength)).collect(),
            cache: job.cache.clone(),
            model: String::new(),
            references: Vec::new(),
            seconds: 0.0,
            mask: job.mask.as_ref().map(|m| HistoryMask {
                sha256: String::new(),
                strength: m.strength,
                crop_padding: m.crop_padding,
                reference: mask_reference,
            }),
        },
        references: references.iter().map(|r| (r.name.clone(), r.bytes.clone())).collect(),
        mask: job.mask.as_ref().map(|m| m.image.to_vec()),
    };
    (job, pending)
}

/// Marks `job` as running and sends it to the worker; a failure to send fails the job.
pub fn start(state: AppState, job: EditJob) {
    state.job.set(JobState::starting(job.id));
    if let Err(e) = send(&ToWorker::Edit(job)) {
        state.job.set(JobState::Failed(e));
    }
}

/// Asks the worker to stop the running edit, if any.
pub fn cancel(state: AppState) {
    if let JobState::Running { id, .. } = state.job.get_untracked()
        && let Err(e) = send(&ToWorker::Cancel { id })
    {
        state.job.set(JobState::Failed(e));
    }
}

/// Seconds the denoising still needs at the steps' measured pace; `None` outside it or before its first step.
pub fn seconds_left(phase: &str, done: u64, total: u64, phase_started: f64, now: f64) -> Option<f64> {
    (phase == "denoising" && done > 0).then(|| (now - phase_started) / 1000.0 / done as f64 * (total - done) as f64)
}

/// The editor's signals (`Copy`, passed to its components).
#[derive(Debug, Clone, Copy)]
pub struct EditForm {
    /// The references, in order (the first sets the output's shape).
    pub references: RwSignal<Vec<Reference>>,
    /// Why the last file could not be added.
    pub reference_error: RwSignal<Option<String>>,
    /// The mask painted over the first reference, for a masked edit.
    pub mask: MaskForm,
    /// The instruction.
    pub prompt: RwSignal<String>,
    /// Index of [`ASPECTS`], or [`CUSTOM`].
    pub aspect: RwSignal<usize>,
    /// Side of the same-area square, pixels.
    pub area_side: RwSignal<usize>,
    /// Width and height for [`CUSTOM`].
    pub custom_size: RwSignal<(usize, usize)>,
    /// Denoising steps.
    pub steps: RwSignal<usize>,
    /// Distilled guidance.
    pub guidance: RwSignal<f32>,
    /// Index of [`SPEEDS`].
    pub speed: RwSignal<usize>,
    /// The seed as typed; empty for a random one (the one used is written back).
    pub seed: RwSignal<String>,
    /// The first reference of the last job started, for the comparison.
    pub first_of_job: RwSignal<Option<Reference>>,
    /// The stage's view as last asked for (shown when it has something to show; see [`StageView::shown`]).
    pub stage: RwSignal<StageView>,
    /// Bumped after a result is stored in the history.
    pub history_revision: RwSignal<u32>,
    /// Why a result could not be stored or an entry re-run.
    pub history_error: RwSignal<Option<String>>,
    next_id: StoredValue<u32>,
    pending: StoredValue<Option<Pending>>,
}

impl EditForm {
    /// A fresh form: no references, empty prompt, the Draft preset, the first reference's aspect, no step cache.
    pub fn new() -> Self {
        Self {
            references: RwSignal::new(Vec::new()),
            reference_error: RwSignal::new(None),
            mask: MaskForm::new(),
            prompt: RwSignal::new(String::new()),
            aspect: RwSignal::new(0),
            area_side: RwSignal::new(PRESETS[0].side),
            custom_size: RwSignal::new((1024, 768)),
            steps: RwSignal::new(PRESETS[0].steps),
            guidance: RwSignal::new(2.5),
            speed: RwSignal::new(0),
            seed: RwSignal::new(String::new()),
            first_of_job: RwSignal::new(None),
            stage: RwSignal::new(StageView::Reference),
            history_revision: RwSignal::new(0),
            history_error: RwSignal::new(None),
            next_id: StoredValue::new(1),
            pending: StoredValue::new(None),
        }
    }

    /// Reads `files` into references, in order, until [`MAX_REFERENCES`]; errors go to `reference_error`.
    pub fn add(self, files: Vec<web_sys::File>) {
        let (references, reference_error) = (self.references, self.reference_error);
        reference_error.set(None);
        spawn_local(async move {
            for file in files {
                if references.with_untracked(Vec::len) >= MAX_REFERENCES {
                    reference_error.set(Some(format!("at most {MAX_REFERENCES} references: remove one first")));
                    break;
                }
                match read_file(file).await {
                    Ok(reference) => references.update(|r| r.push(reference)),
                    Err(e) => reference_error.set(Some(e)),
                }
            }
        });
    }

    /// Swaps the references at `from` and `to` (nothing when either is out of range).
    pub fn move_reference(self, from: usize, to: usize) {
        self.references.update(|r| {
            if from < r.len() && to < r.len() {
                r.swap(from, to);
            }
        })
    }

    /// Removes the reference at `index`, if there is one.
    pub fn remove_reference(self, index: usize) {
        self.references.update(|r| {
            if index < r.len() {
                r.remove(index);
            }
        })
    }

    /// Appends `reference` unless there are [`MAX_REFERENCES`] already.
    pub fn append_reference(self, reference: Reference) {
        self.references.update(|r| {
            if r.len() < MAX_REFERENCES {
                r.push(reference)
            }
        });
    }

    /// The preset the steps and size match, or `"custom"` (tracked).
    pub fn active_preset(self) -> &'static str {
        preset_name(self.steps.get(), self.area_side.get())
    }

    /// Sets the steps and size of `preset`.
    pub fn apply_preset(self, preset: Preset) {
        self.steps.set(preset.steps);
        self.area_side.set(preset.side);
    }

    /// The output size text for the current inputs (tracked); see [`describe_output`].
    pub fn output_description(self) -> String {
        let first = self.references.with(|r| r.first().map(|r| r.size));
        if self.mask.enabled.get()
            && let Some(Some((width, height))) = first
        {
            let side = self.area_side.get();
            return match reference_size(width, height, Resize::Bucket, (side * side).min(DEFAULT_MAX_AREA * 4)) {
                Ok((w, h)) => format!("output: {w}×{h} px (a masked edit keeps the image's shape)"),
                Err(e) => e.to_string(),
            };
        }
        describe_output(self.aspect.get(), self.area_side.get(), self.custom_size.get(), first)
    }

    /// What the stage has to show (tracked).
    pub fn showable(self, state: AppState) -> Showable {
        let paintable = self.references.with(|r| r.first().and_then(Reference::mask_owner).is_some());
        let (job, compare) = state.job.with(|job| match job {
            JobState::Running { .. } => (true, false),
            JobState::Done { .. } => (true, self.first_of_job.with(Option::is_some)),
            _ => (false, false),
        });
        Showable {
            reference: self.references.with(|r| !r.is_empty()),
            mask: paintable && self.mask.enabled.get(),
            job,
            compare,
        }
    }

    /// Turns masking on (the stage shows the mask) or off.
    pub fn set_masking(self, on: bool) {
        self.mask.enabled.set(on);
        if on {
            self.stage.set(StageView::Mask);
        }
    }

    /// Whether an edit can start: a model loaded, none running, a non-empty prompt (tracked).
    pub fn can_generate(self, state: AppState) -> bool {
        matches!(state.model.get(), ModelState::Loaded(_)) && !running(state) && !self.prompt.get().trim().is_empty()
    }

    /// Starts an edit with the current inputs; an empty or unreadable seed becomes a random one, written back.
    pub fn generate(self, state: AppState) {
        let id = self.next_id.get_value();
        self.next_id.set_value(id + 1);
        let seed =
            self.seed.get_untracked().trim().parse::<u64>().unwrap_or_else(|_| crate::pipeline::rng::random_seed());
        self.seed.set(seed.to_string());
        let settings = Settings {
            prompt: self.prompt.get_untracked(),
            aspect: self.aspect.get_untracked(),
            side: self.area_side.get_untracked(),
            custom: self.custom_size.get_untracked(),
            steps: self.steps.get_untracked(),
            guidance: self.guidance.get_untracked(),
            speed: self.speed.get_untracked(),
            mag_ratios: state.mag_ratios.get_untracked(),
        };
        if SPEEDS[settings.speed].cache(settings.mag_ratios.as_deref()).is_none() {
            // MagCache chosen for a model without ratios (another model was loaded since): the edit runs
            // without a cache, and the control says so.
            self.speed.set(0);
        }
        let mask = match self.mask.job() {
            Ok(mask) => mask,
            Err(message) => return state.job.set(JobState::Failed(message)),
        };
        self.first_of_job.set(self.references.with_untracked(|r| r.first().cloned()));
        self.stage.set(StageView::Job);
        let loras = state.loras.with_untracked(|all| LoraEntry::active(all));
        let mask_reference = self.mask.reference.get_untracked();
        let (job, pending) = self
            .references
            .with_untracked(|references| request(id, &settings, seed, references, loras, mask, mask_reference));
        self.pending.set_value(Some(pending));
        start(state, job);
    }

    /// Fills the form with a history entry (its references, settings and LoRA choices) and starts it when it
    /// can; an entry whose LoRAs are gone, or whose references cannot be shown, sets `history_error` instead.
    pub fn rerun(self, state: AppState, Rerun { entry, references: files, mask }: Rerun) {
        let mut restored = Vec::new();
        for (name, bytes) in files {
            match reference_from_bytes(name, bytes) {
                Ok(reference) => restored.push(reference),
                Err(e) => return self.history_error.set(Some(e)),
            }
        }
        let missing: Vec<String> = entry
            .loras
            .iter()
            .filter(|(name, _)| !state.loras.with_untracked(|all| all.iter().any(|l| &l.name == name)))
            .map(|(name, _)| name.clone())
            .collect();
        if !missing.is_empty() {
            return self.history_error.set(Some(format!("add the LoRA {} again to re-run this", missing.join(", "))));
        }
        state.loras.update(|all| {
            for lora in all.iter_mut() {
                let used = entry.loras.iter().find(|(name, _)| *name == lora.name);
                lora.enabled = used.is_some();
                if let Some((_, strength)) = used {
                    lora.strength = *strength;
                }
            }
        });
        self.history_error.set(None);
        match (&mask, &entry.mask) {
            (Some(png), Some(kept)) => {
                let first = restored.first().and_then(Reference::mask_owner);
                if let Err(e) = self.mask.restore(first, png, kept) {
                    return self.history_error.set(Some(e));
                }
            }
            _ => self.mask.enabled.set(false),
        }
        self.references.set(restored);
        self.prompt.set(entry.prompt.clone());
        self.aspect.set(entry.aspect.min(CUSTOM));
        if entry.aspect == CUSTOM {
            self.custom_size.set((entry.width, entry.height));
        }
        self.area_side.set(entry.side);
        self.steps.set(entry.steps);
        self.guidance.set(entry.guidance);
        self.speed.set(Speed::index_of(&entry.cache));
        self.seed.set(entry.seed.to_string());
        if self.can_generate(state) {
            self.generate(state);
        }
    }

    /// Keeps each finished job started here in the history (bumping `history_revision`), and forgets cancelled
    /// and failed ones. Call once, from the component that owns the form.
    pub fn keep_results(self, state: AppState) {
        let (pending, history_revision, history_error) = (self.pending, self.history_revision, self.history_error);
        Effect::new(move |_| match state.job.get() {
            JobState::Done { png, seed, width, height, millis, .. } => {
                let Some(Pending { mut entry, references, mask }) = pending.try_update_value(Option::take).flatten()
                else {
                    return;
                };
                entry.id = js_sys::Date::now() as u64;
                (entry.seed, entry.width, entry.height, entry.seconds) = (seed, width, height, millis / 1000.0);
                entry.model = match state.model.get_untracked() {
                    ModelState::Loaded(description) => description,
                    _ => String::new(),
                };
                spawn_local(async move {
                    match super::history::add(entry, &png, &references, mask.as_deref()).await {
                        Ok(()) => history_revision.update(|r| *r += 1),
                        Err(e) => history_error.set(Some(format!("the result could not be kept in the history: {e}"))),
                    }
                });
            }
            JobState::Cancelled | JobState::Failed(_) => pending.set_value(None),
            _ => {}
        });
    }
}

impl Default for EditForm {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an edit is running (tracked).
pub fn running(state: AppState) -> bool {
    matches!(state.job.get(), JobState::Running { .. })
}
