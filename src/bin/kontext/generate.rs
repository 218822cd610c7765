//! `kontext edit` and `kontext forward`: the pipeline and single DiT calls on local files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use kontext_web::device::{self, Backend, read_f32};
use kontext_web::formats::weights::Weights;
use kontext_web::formats::{FileSource, SafetensorsFile};
use kontext_web::model::flux::Flux;
use kontext_web::model::layers::LoraAdapter;
use kontext_web::pipeline::cache::{CacheConfig, MagRatios};
use kontext_web::pipeline::edit::{Edit, EditRequest, Phase, plan_edit};
use kontext_web::pipeline::loader::{self, Folder, KontextModel, ModelFiles, NoFolder, Overrides};
use kontext_web::pipeline::mask::MaskedEdit;
use kontext_web::pipeline::plan::{self, DeviceLimits, MemoryPlan, PlanInputs, Residency};
use kontext_web::pipeline::{image as images, rng, size};
use kontext_web::{Error, Result};

/// Where the model comes from: a diffusers folder and/or single files.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A model folder in the diffusers layout (FLUX.1-Kontext-dev).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The DiT instead of the folder's: BFL `flux1-kontext-dev.safetensors`, diffusers safetensors or a GGUF.
    #[arg(long)]
    transformer: Option<PathBuf>,
    /// The T5 encoder instead of the folder's: a llama.cpp T5 GGUF (its tokenizer is used too).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// CLIP-L instead of the folder's: `clip_l.safetensors`.
    #[arg(long)]
    clip: Option<PathBuf>,
    /// The VAE instead of the folder's: BFL `ae.safetensors`.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// `cpu` (burn flex) or `wgpu` (the GPU).
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// Activations of the packed (GGUF) matmuls on wgpu: `f32` (the default) or `f16` (adapters with
    /// `shader-f16`; Flux's activations can overflow it); also `KONTEXT_PRECISION`. The rest stays f32.
    #[arg(long)]
    precision: Option<String>,
    /// The kernel path on wgpu: `coop` (cooperative matrices, f16 products accumulated in f32), `subgroup-f16`
    /// (as `--precision f16`) or `f32`; also `KONTEXT_KERNELS`. Without it, `coop` where the adapter has
    /// cooperative matrices, else `f32`. A path the adapter lacks is an error.
    #[arg(long)]
    kernels: Option<String>,
    /// GPU memory the load and the edit may hold at once: `8GiB`, `300MiB`, `6GB`, or bytes. Parts are then
    /// uploaded for the phases that use them and released after, the DiT streams block by block when it does
    /// not fit whole, and an edit that cannot fit is refused before anything is uploaded. Without it: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    gpu_memory: Option<u64>,
    /// A LoRA adapter for the DiT (diffusers/PEFT, kohya or ComfyUI safetensors) with its strength (default
    /// 1.0), applied at runtime on top of the weights as loaded; repeat for several.
    #[arg(long = "lora", value_name = "FILE[:WEIGHT]", value_parser = parse_lora)]
    loras: Vec<(PathBuf, f32)>,
}

/// `8GiB`, `300MiB`, `6GB`, `512MB`, `1.5GiB` or a plain byte count.
pub fn parse_bytes(arg: &str) -> std::result::Result<u64, String> {
    let arg = arg.trim();
    let split = arg.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(arg.len());
    let (number, unit) = arg.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown unit `{other}`: use B, MB, MiB, GB or GiB")),
    };
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok((value * scale as f64) as u64),
        _ => Err(format!("`{arg}` is not a size such as 8GiB or 300MiB")),
    }
}

/// `FILE[:WEIGHT]`: the weight is what follows the last `:` when it parses as a number (checked when applied,
/// so that a bad one is reported like every other input error).
fn parse_lora(arg: &str) -> std::result::Result<(PathBuf, f32), String> {
    Ok(match arg.rsplit_once(':').map(|(file, weight)| (file, weight.parse::<f32>())) {
        Some((file, Ok(weight))) if !file.is_empty() => (file.into(), weight),
        _ => (arg.into(), 1.0),
    })
}

/// Options of `kontext edit`.
#[derive(clap::Args)]
pub struct EditArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The instruction: describe the change ("make the car red"), or the image when no reference is given.
    #[arg(long)]
    prompt: String,
    /// A reference image (PNG, JPEG, WebP); repeat for several.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
    /// Denoising steps.
    #[arg(long, default_value_t = 28)]
    steps: usize,
    /// Distilled guidance.
    #[arg(long, default_value_t = 2.5)]
    guidance: f32,
    /// Seed of the initial noise (random and printed when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Initial noise instead of the seed's: a safetensors file with tensor `noise`, packed `[1, tokens, 64]`.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// Where to write the PNG (it carries the recipe in `tEXt` chunks `kontext-recipe` and `Software`).
    #[arg(long)]
    out: PathBuf,
    /// Also write `latents` (final packed latents) and `image` (`[1,3,H,W]` in [0,1]) to this safetensors file.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// What stays on the device between the phases of the edit. `keep`: everything; `lean`: the DiT and the
    /// VAE (T5 and CLIP are freed after encoding, the DiT's modulation layers once every step's modulations
    /// are computed); `phased`: each part only in the phases that use it; `streamed`: `phased`, with the DiT's
    /// blocks uploaded one at a time each step; `auto`: the most resident that fits `--gpu-memory` (without
    /// it: lean for DiTs of 1 GiB or more on a GPU, else keep).
    #[arg(long, default_value = "auto", value_parser = ["auto", "keep", "lean", "phased", "streamed"])]
    memory: String,
    /// Write measurements to this JSON file: the device allocator's peak (`peak_device_bytes`), the budget and
    /// the planned peak, per-phase peaks, load, step and total seconds, and the steps that reused the step
    /// cache (`cached_steps`, 0-based).
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Step cache: `none`, `fbc:THRESHOLD` (First-Block-Cache: skip the other blocks while the first block's
    /// residual changes by at most THRESHOLD, relative L1) or `mag:THRESHOLD[,MAX_SKIP[,RETENTION]]`
    /// (MagCache, defaults 3 and 0.2; needs --cache-ratios), as diffusers' hooks define them.
    #[arg(long, default_value = "none", value_name = "KIND")]
    cache: String,
    /// The model's magnitude ratios for MagCache: the JSON file `kontext calibrate-cache` writes.
    #[arg(long, value_name = "FILE")]
    cache_ratios: Option<PathBuf>,
    /// A masked edit of the first --image: a PNG, white where the edit may change the image and black where it
    /// must not, of any size with the image's aspect ratio. The result keeps the image's size.
    #[arg(long, value_name = "FILE")]
    mask: Option<PathBuf>,
    /// With --mask: how much of the schedule runs, in (0, 1] (default 1: from noise; 0.6 starts from the image
    /// and keeps more of it).
    #[arg(long, requires = "mask")]
    strength: Option<f64>,
    /// With --mask: edit only a crop around the mask, PADDING pixels wider on each side (scaled up to the
    /// image's size while it is edited), and paste it back; for small masks on large images.
    #[arg(long, requires = "mask", value_name = "PADDING")]
    mask_crop: Option<u32>,
    /// With --mask: an image that conditions the edit instead of the image being edited (what goes into the
    /// masked area).
    #[arg(long, requires = "mask", value_name = "FILE")]
    mask_reference: Option<PathBuf>,
}

/// Options of `kontext calibrate-cache`.
#[derive(clap::Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    edit: EditArgs,
    /// Where to write the magnitude ratios (JSON; `kontext edit --cache-ratios` and the app read it).
    #[arg(long, value_name = "FILE")]
    ratios: PathBuf,
}

/// The output size and how references are sized, as `kontext edit` and `kontext plan` take them.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Output width in pixels (floored to a multiple of 16); needs --height. Default: the first reference's
    /// aspect at --max-area (1024×1024 without references).
    #[arg(long, requires = "height")]
    width: Option<usize>,
    /// Output height in pixels (floored to a multiple of 16); needs --width.
    #[arg(long, requires = "width")]
    height: Option<usize>,
    /// Pixel area of the output and of the reference buckets.
    #[arg(long, default_value_t = size::DEFAULT_MAX_AREA)]
    max_area: usize,
    /// Use references at their own size (floored to ×16) instead of the preferred Kontext bucket.
    #[arg(long)]
    no_resize: bool,
}

impl OutputArgs {
    fn size(&self) -> Option<(usize, usize)> {
        self.width.zip(self.height)
    }

    fn resize(&self) -> size::Resize {
        if self.no_resize { size::Resize::None } else { size::Resize::Bucket }
    }
}

/// Options of `kontext plan`.
#[derive(clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// A reference size `WIDTHxHEIGHT`, sized as an edit sizes its references; repeat for several.
    #[arg(long = "reference", value_name = "WxH", value_parser = parse_size)]
    references: Vec<(usize, usize)>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of a file set: every transformer × T5 pair of the app's catalog (file sizes, FLUX.1 Kontext [dev]
    /// widths) at 512² and 1024² with a reference of the same size, under budgets of 6, 8, 12, 16 and 24 GB on
    /// this device's buffer limits: what stays on the device, or `—` where nothing fits.
    #[arg(long)]
    catalog: bool,
}

/// `WIDTHxHEIGHT`.
fn parse_size(arg: &str) -> std::result::Result<(usize, usize), String> {
    let (w, h) = arg.split_once(['x', '×']).ok_or_else(|| format!("`{arg}` is not WIDTHxHEIGHT"))?;
    match (w.trim().parse(), h.trim().parse()) {
        (Ok(w), Ok(h)) => Ok((w, h)),
        _ => Err(format!("`{arg}` is not WIDTHxHEIGHT")),
    }
}

/// Options of `kontext forward`.
#[derive(clap::Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Inputs named like diffusers' transformer arguments: hidden_states, encoder_hidden_states,
    /// pooled_projections, timestep, guidance, img_ids, txt_ids.
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the output tensor `out`.
    #[arg(long)]
    out: PathBuf,
}

/// Adapters as [`Flux::set_adapters`] and [`plan_edit`] take them.
fn active(adapters: &[(LoraAdapter, f32)]) -> Vec<(&LoraAdapter, f32)> {
    adapters.iter().map(|(adapter, weight)| (adapter, *weight)).collect()
}

impl ModelArgs {
    fn device(&self) -> Result<Device> {
        let device = device::open(self.backend.parse::<Backend>()?)?;
        super::choose_kernels(self.kernels.as_deref(), self.precision.as_deref(), &device)?;
        Ok(device)
    }

    /// Reads every `--lora` against `flux` and makes them its active adapters; returns them by file name.
    fn apply_loras(&self, flux: &mut Flux, device: &Device) -> Result<Vec<(String, f32)>> {
        let adapters = self.read_loras(flux)?;
        self.activate_loras(&adapters, flux, device)
    }

    /// Reads every `--lora` against `flux`, with its weight.
    fn read_loras(&self, flux: &Flux) -> Result<Vec<(LoraAdapter, f32)>> {
        self.loras
            .iter()
            .map(|(path, weight)| {
                if !weight.is_finite() {
                    return Err(Error::Invalid(format!(
                        "the LoRA weight of {} is not a finite number",
                        path.display()
                    )));
                }
                Ok((LoraAdapter::read(FileSource::open(path)?, flux)?, *weight))
            })
            .collect()
    }

    /// Makes `adapters` (read by [`ModelArgs::read_loras`]) `flux`'s active adapters; returns them by file name.
    fn activate_loras(
        &self,
        adapters: &[(LoraAdapter, f32)],
        flux: &mut Flux,
        device: &Device,
    ) -> Result<Vec<(String, f32)>> {
        flux.set_adapters(&active(adapters), device)?;
        Ok(self
            .loras
            .iter()
            .zip(adapters)
            .map(|((path, weight), (adapter, _))| {
                let name =
                    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
                println!("LoRA {name} at {weight}: {} layers, rank {}", adapter.layers.len(), adapter.max_rank());
                if adapter.ignored_text_encoder_tensors > 0 {
                    println!("  (its {} text-encoder tensors are not applied)", adapter.ignored_text_encoder_tensors);
                }
                (name, *weight)
            })
            .collect())
    }

    /// The adapter's limits with `--gpu-memory` as the budget.
    fn limits(&self, device: &Device) -> DeviceLimits {
        DeviceLimits::of(device, self.gpu_memory)
    }

    /// Resolves every part of the model without uploading anything.
    fn open(&self, device: &Device) -> Result<KontextModel> {
        let overrides = Overrides {
            transformer: open_file(&self.transformer)?,
            t5: open_file(&self.t5)?,
            clip: open_file(&self.clip)?,
            vae: open_file(&self.vae)?,
        };
        KontextModel::open(self.folder()?.as_ref(), overrides, device)
    }

    fn folder(&self) -> Result<Box<dyn ModelFiles>> {
        match &self.model {
            Some(dir) if dir.is_dir() => Ok(Box::new(Folder(dir.clone()))),
            Some(dir) => Err(Error::Invalid(format!("--model {}: not a directory", dir.display()))),
            None => Ok(Box::new(NoFolder)),
        }
    }
}

fn open_file(path: &Option<PathBuf>) -> Result<Option<Box<dyn kontext_web::formats::ByteSource>>> {
    path.as_ref()
        .map(|p| FileSource::open(p).map(|f| Box::new(f) as Box<dyn kontext_web::formats::ByteSource>))
        .transpose()
}

fn read_image(path: &Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    images::decode(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

fn tensor_from<const D: usize>(file: &SafetensorsFile, name: &str, label: &Path, device: &Device) -> Result<Tensor<D>> {
    let host = file.read(name).map_err(|e| Error::Invalid(format!("{}: {e}", label.display())))?;
    let shape: [usize; D] = host.shape.clone().try_into().map_err(|_| {
        Error::Invalid(format!(
            "{}: tensor `{name}` has shape {:?}, expected {D} dimensions",
            label.display(),
            host.shape
        ))
    })?;
    Ok(Tensor::from_data(TensorData::new(host.data, shape), device))
}

/// Reads `name` as a `D`-rank tensor, accepting the shapes diffusers callers use: a scalar for a `[1]` vector
/// (timestep, guidance) and a leading batch of 1 on position ids (`[1, n, 3]`, deprecated in diffusers).
fn lenient_tensor<const D: usize>(
    file: &SafetensorsFile,
    name: &str,
    label: &Path,
    device: &Device,
) -> Result<Tensor<D>> {
    let host = file.read(name).map_err(|e| Error::Invalid(format!("{}: {e}", label.display())))?;
    let mut shape = host.shape.clone();
    if shape.is_empty() {
        shape.push(1);
    }
    while shape.len() > D && shape[0] == 1 {
        shape.remove(0);
    }
    let dims: [usize; D] = shape.try_into().map_err(|_| {
        Error::Invalid(format!(
            "{}: tensor `{name}` has shape {:?}, expected {D} dimensions",
            label.display(),
            host.shape
        ))
    })?;
    Ok(Tensor::from_data(TensorData::new(host.data, dims), device))
}

fn write_safetensors(path: &Path, tensors: Vec<(&str, Vec<usize>, Vec<f32>)>) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.into_iter().map(|(n, s, v)| (n.to_string(), s, bytemuck::cast_slice(&v).to_vec())).collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let serialized = safetensors::serialize(views, None).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(path, serialized).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))
}

/// What `kontext edit --stats` writes.
#[derive(serde::Serialize)]
struct EditStats {
    backend: String,
    width: usize,
    height: usize,
    steps: usize,
    /// `--gpu-memory`.
    budget_bytes: Option<u64>,
    /// The plan's largest phase peak.
    planned_peak_bytes: u64,
    /// The step cache (`--cache`).
    cache: String,
    /// Steps (0-based) that reused the step cache instead of running the DiT's blocks after the first.
    cached_steps: Vec<usize>,
    /// The device allocator's most reserved bytes over the load and the edit (`None` on the CPU).
    peak_device_bytes: Option<u64>,
    /// The allocator's most reserved bytes in each phase.
    phase_peak_device_bytes: Vec<(String, u64)>,
    residency: Residency,
    plan: MemoryPlan,
    load_seconds: f64,
    step_seconds: Vec<f64>,
    total_seconds: f64,
}

/// Prints uploads of weights as they go, in bytes with an ETA: one rewritten line on a terminal, a line per
/// quarter otherwise.
fn upload_printer() -> loader::UploadReport {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal();
    let (mut started, mut last_part, mut last_quarter) = (Instant::now(), String::new(), 0u64);
    Box::new(move |part: &str, done: u64, total: u64| {
        if part != last_part || done == 0 {
            (started, last_part, last_quarter) = (Instant::now(), part.to_string(), 0);
        }
        let mb = |bytes: u64| bytes as f64 / 1e6;
        let elapsed = started.elapsed().as_secs_f64();
        let eta = match done {
            0 => String::new(),
            _ => format!(", ETA {:.0} s", elapsed * (total - done) as f64 / done as f64),
        };
        let line =
            format!("uploading {part}: {:.1} of {:.1} MB ({}%{eta})", mb(done), mb(total), done * 100 / total.max(1));
        if terminal {
            print!("\r\x1b[2K{line}");
            if done == total {
                println!();
            }
            let _ = std::io::stdout().flush();
        } else if done == total || done * 4 / total.max(1) > last_quarter {
            last_quarter = done * 4 / total.max(1);
            println!("{line}");
        }
    })
}

/// `--memory`: a residency to plan with, or `None` (auto) for the most resident that fits.
fn residency_flag(memory: &str) -> Option<Residency> {
    match memory {
        "keep" => Some(Residency::KEEP_ALL),
        "lean" => Some(Residency::LEAN),
        "phased" => Some(Residency::PHASED),
        "streamed" => Some(Residency::STREAMED),
        _ => None,
    }
}

/// The step cache `--cache` and `--cache-ratios` ask for, and the model the ratios file says it was measured on.
fn cache_flag(args: &EditArgs) -> Result<(CacheConfig, Option<String>)> {
    let config = CacheConfig::parse(&args.cache)?;
    match (&config, &args.cache_ratios) {
        (CacheConfig::Mag { .. }, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
            let file = MagRatios::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            let config = config.with_ratios(file.mag_ratios);
            config.validate()?;
            Ok((config, Some(file.model).filter(|m| !m.is_empty())))
        }
        (_, Some(_)) => Err(Error::Invalid("--cache-ratios is for --cache mag:…".into())),
        _ => {
            config.validate()?;
            Ok((config, None))
        }
    }
}

/// `kontext calibrate-cache`: an edit with every step run, writing the magnitude ratios it measured.
pub fn calibrate_cache(mut args: CalibrateArgs) -> Result<()> {
    if args.edit.cache != "none" {
        return Err(Error::Invalid("calibrate-cache runs every step: leave --cache out".into()));
    }
    let ratios = args.ratios.clone();
    args.edit.cache = "calibrate".into();
    run_edit(args.edit, Some(&ratios))
}

/// `kontext edit`.
pub fn edit(args: EditArgs) -> Result<()> {
    run_edit(args, None)
}

/// `--mask` and its options, checked against the image to edit (the first of `references`).
fn read_mask(args: &EditArgs, references: &[image::RgbImage]) -> Result<Option<MaskedEdit>> {
    let Some(path) = &args.mask else { return Ok(None) };
    let Some(image) = references.first() else {
        return Err(Error::Invalid("--mask needs the image to edit: give it with --image".into()));
    };
    let mask = MaskedEdit {
        mask: read_image(path)?,
        strength: args.strength.unwrap_or(1.0),
        crop_padding: args.mask_crop,
        reference: args.mask_reference.as_deref().map(read_image).transpose()?,
    };
    mask.check(image.dimensions(), args.steps)?;
    Ok(Some(mask))
}

/// An edit; with `ratios_out`, a calibration whose ratios go to that file.
fn run_edit(args: EditArgs, ratios_out: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let (cache, ratios_model) = match ratios_out {
        Some(_) => (CacheConfig::Calibrate, None),
        None => cache_flag(&args)?,
    };
    let references = args.images.iter().map(|p| read_image(p)).collect::<Result<Vec<_>>>()?;
    let mask = read_mask(&args, &references)?;
    let device = args.model.device()?;
    let noise = match &args.noise {
        Some(path) => {
            let file = SafetensorsFile::open(FileSource::open(path)?)?;
            Some(tensor_from::<3>(&file, "noise", path, &device)?)
        }
        None => None,
    };
    let mask_recipe = args.mask.as_ref().zip(mask.as_ref()).map(|(path, mask)| {
        images::MaskRecipe::of(mask, &path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    });
    let seed = args.seed.unwrap_or_else(rng::random_seed);
    let request = EditRequest {
        prompt: args.prompt,
        references,
        size: args.output.size(),
        max_area: args.output.max_area,
        resize: args.output.resize(),
        steps: args.steps,
        guidance: args.guidance,
        seed,
        cache,
        mask,
    };
    let mut model = args.model.open(&device)?;
    let this_model = images::Recipe::describe_model(&model.flux_config);
    if let Some(measured_on) = ratios_model.filter(|m| *m != this_model) {
        println!("note: the MagCache ratios were measured on another model ({measured_on}); they are used as given");
    }
    let adapters = args.model.read_loras(&model.flux)?;
    let limits = args.model.limits(&device);
    let plan = plan_edit(&model, &request, &active(&adapters), limits, residency_flag(&args.memory))?;
    model.follow(&plan);
    model.on_upload(upload_printer());
    let budget = args.model.gpu_memory.map(|b| format!(" of {}", plan::size(b))).unwrap_or_default();
    println!("memory: {}; planned peak {}{budget}", plan.residency.describe(), plan::size(plan.peak_bytes));
    println!("loading the model…");
    model.upload_kept(&device)?;
    let loras = args.model.activate_loras(&adapters, &mut model.flux, &device)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let mut edit = Edit::prepare_reporting(&mut model, &request, noise, &device, &mut |phase| match phase {
        Phase::EncodingText => println!("encoding the prompt…"),
        Phase::EncodingReferences if !request.references.is_empty() => {
            println!("encoding {} reference image(s)…", request.references.len())
        }
        _ => {}
    })?;
    let (width, height) = edit.size();
    let (_, steps_run) = edit.progress();
    match &request.mask {
        Some(mask) => println!(
            "masked edit of {width}×{height}{}: {steps_run} of {} steps (strength {}), guidance {}, seed {seed}",
            mask.crop_padding.map(|p| format!(" (a crop around the mask, padding {p})")).unwrap_or_default(),
            request.steps,
            mask.strength,
            request.guidance
        ),
        None => {
            println!("generating {width}×{height}, {} steps, guidance {}, seed {seed}", request.steps, request.guidance)
        }
    }
    let mut step_seconds = Vec::with_capacity(request.steps);
    while !edit.is_denoised() {
        let step_started = Instant::now();
        pollster::block_on(edit.step())?;
        device.sync().map_err(|e| Error::Gpu(format!("{e:?}")))?;
        step_seconds.push(step_started.elapsed().as_secs_f64());
        let (done, steps) = edit.progress();
        let reused = if edit.cache().last_step_reused() { " · reused" } else { "" };
        println!("step {done}/{steps} ({:.2} s){reused}", step_seconds[done - 1]);
    }
    let cached_steps = edit.cache().reused_steps().to_vec();
    if !cached_steps.is_empty() {
        println!("step cache {}: {} of {} steps reused", request.cache.describe(), cached_steps.len(), steps_run);
    }
    let measured_ratios = edit.cache().measured_ratios().to_vec();
    println!("decoding…");
    let result = pollster::block_on(edit.finish())?;
    let recipe = images::Recipe {
        prompt: request.prompt.clone(),
        steps: request.steps,
        guidance: request.guidance,
        seed,
        width,
        height,
        model: this_model,
        references: request.references.len(),
        loras,
        cache: (request.cache != CacheConfig::None).then(|| request.cache.describe()),
        mask: mask_recipe,
    };
    let png = recipe.encode_png(&result.image)?;
    std::fs::write(&args.out, png).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", args.out.display())))?;
    if let Some(path) = ratios_out {
        let ratios = MagRatios { model: recipe.model.clone(), steps: request.steps, mag_ratios: measured_ratios };
        let json = serde_json::to_string_pretty(&ratios).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))?;
        println!("wrote the magnitude ratios of {} steps to {}", request.steps, path.display());
    }
    if let Some(dump) = &args.dump {
        let latents_shape = result.latents.dims().to_vec();
        let latents = pollster::block_on(read_f32(result.latents))?;
        write_safetensors(
            dump,
            vec![("latents", latents_shape, latents), ("image", vec![1, 3, height, width], result.pixels)],
        )?;
    }
    let total_seconds = started.elapsed().as_secs_f64();
    if let Some(path) = &args.stats {
        let stats = EditStats {
            backend: args.model.backend.clone(),
            width,
            height,
            steps: request.steps,
            budget_bytes: args.model.gpu_memory,
            planned_peak_bytes: plan.peak_bytes,
            cache: request.cache.describe(),
            cached_steps,
            peak_device_bytes: model.meter.peak_bytes,
            phase_peak_device_bytes: model.meter.by_label.clone(),
            residency: plan.residency,
            plan,
            load_seconds,
            step_seconds,
            total_seconds,
        };
        let json = serde_json::to_string_pretty(&stats).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(peak) = model.meter.peak_bytes {
        println!("device memory peak {} (measured)", plan::size(peak));
    }
    println!("wrote {} ({width}×{height}, seed {seed}) in {total_seconds:.1} s", args.out.display());
    Ok(())
}

/// `kontext plan --catalog`: a Markdown table.
fn plan_catalog(args: &PlanArgs, device: &Device) -> Result<()> {
    use kontext_web::store::{Role, catalog::CATALOG};
    const BUDGETS_GB: [u64; 5] = [6, 8, 12, 16, 24];
    let part = |role: Role| CATALOG.iter().filter(move |f| f.role == role);
    let one = |role: Role| part(role).next().map_or(0, |f| f.size);
    println!("| DiT | T5 | output | {} |", BUDGETS_GB.map(|gb| format!("{gb} GB")).join(" | "));
    println!("|---|---|---|{}", "---|".repeat(BUDGETS_GB.len()));
    for dit in part(Role::Transformer) {
        for t5 in part(Role::T5) {
            for side in [512, 1024] {
                let cells = BUDGETS_GB
                    .iter()
                    .map(|gb| {
                        let inputs = PlanInputs {
                            flux: kontext_web::model::FluxConfig::kontext_dev(),
                            dit: plan::DitWeights::DeviceBytes(dit.size),
                            t5: kontext_web::model::t5::T5Config::v1_1_xxl(),
                            t5_bytes: t5.size,
                            clip_bytes: one(Role::Clip),
                            vae: kontext_web::model::vae::config::VaeConfig::flux(),
                            vae_bytes: one(Role::Vae),
                            limits: DeviceLimits { budget: Some(gb * 1_000_000_000), ..args.model.limits(device) },
                            output: (side, side),
                            references: vec![(side, side)],
                            text_tokens: kontext_web::pipeline::kontext::T5_TOKENS,
                            modulation_precomputed: true,
                            residency: None,
                            cached_residuals: 0,
                            masked: false,
                            adapter_bytes: 0,
                        };
                        let plan = MemoryPlan::new(&inputs)?;
                        Ok(match plan.fits_budget {
                            Some(true) => plan.residency.name().to_string(),
                            _ => "—".to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let label = |label: &str| label.split(' ').next_back().unwrap_or(label).to_string();
                println!("| {} | {} | {side}² | {} |", label(dit.label), label(t5.label), cells.join(" | "));
            }
        }
    }
    Ok(())
}

/// `kontext plan`.
pub fn plan(args: PlanArgs) -> Result<()> {
    let device = args.model.device()?;
    if args.catalog {
        return plan_catalog(&args, &device);
    }
    let model = args.model.open(&device)?;
    let output = match (args.output.size(), args.references.first()) {
        (None, None) => (1024, 1024),
        (given, first) => size::output_size(given, first.copied(), args.output.max_area)?,
    };
    let references = args
        .references
        .iter()
        .map(|&(w, h)| size::reference_size(w, h, args.output.resize(), args.output.max_area))
        .collect::<Result<Vec<_>>>()?;
    let inputs = model.plan_inputs(output, references, args.model.limits(&device));
    let plan = MemoryPlan::new(&inputs)?;
    let fits = MemoryPlan::what_would_fit(&inputs)?;
    let verdict = match (plan.fits_budget, fits.is_empty()) {
        (None, _) => "no budget given (--gpu-memory): nothing to check against".to_string(),
        (Some(true), _) => "fits".to_string(),
        (Some(false), true) => "does not fit, and nothing smaller does".to_string(),
        (Some(false), false) => format!("does not fit; what would: {}", fits.join("; ")),
    };
    if args.json {
        let value =
            serde_json::json!({ "plan": plan, "fits": plan.fits_budget, "what_would_fit": fits, "verdict": verdict });
        println!("{}", serde_json::to_string_pretty(&value).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!("{plan}");
        println!("{verdict}");
    }
    Ok(())
}

/// `kontext forward`.
pub fn forward(args: ForwardArgs) -> Result<()> {
    let device = args.model.device()?;
    let inputs = SafetensorsFile::open(FileSource::open(&args.inputs)?)?;
    let (mut flux, _) =
        loader::load_transformer(args.model.folder()?.as_ref(), open_file(&args.model.transformer)?, &device)?;
    args.model.apply_loras(&mut flux, &device)?;
    let label = args.inputs.as_path();
    let guidance = if inputs.contains("guidance") {
        Some(lenient_tensor::<1>(&inputs, "guidance", label, &device)?)
    } else {
        None
    };
    let out = flux.forward(
        tensor_from::<3>(&inputs, "hidden_states", label, &device)?,
        lenient_tensor::<2>(&inputs, "img_ids", label, &device)?,
        tensor_from::<3>(&inputs, "encoder_hidden_states", label, &device)?,
        lenient_tensor::<2>(&inputs, "txt_ids", label, &device)?,
        lenient_tensor::<1>(&inputs, "timestep", label, &device)?,
        tensor_from::<2>(&inputs, "pooled_projections", label, &device)?,
        guidance,
    )?;
    let shape = out.dims().to_vec();
    let values = pollster::block_on(read_f32(out))?;
    write_safetensors(&args.out, vec![("out", shape.clone(), values)])?;
    println!("wrote {} {shape:?}", args.out.display());
    Ok(())
}
