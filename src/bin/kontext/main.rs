//! `kontext`: the native command line over the same model code as the web app.

#[cfg(not(target_arch = "wasm32"))]
mod bench;
#[cfg(not(target_arch = "wasm32"))]
mod generate;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use kontext_web::device::selfcheck;
    use kontext_web::device::{self, Backend, faults};
    use kontext_web::formats::FileSource;
    use kontext_web::kernels::quant_matmul;
    use kontext_web::pipeline::loader::{self, Folder, ModelFiles, NoFolder};
    use kontext_web::{Error, Result};

    #[derive(Parser)]
    #[command(name = "kontext", version, about = "FLUX.1 Kontext [dev] image editing: the native CLI of kontext-web")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Measure packed against f32 matmuls, flash against reference attention and one DiT step of a
        /// medium random-weight Flux in f32, Q8_0 and Q4_0, side by side on one device.
        Bench(super::bench::BenchArgs),
        /// Report the compute device (adapter, limits, features) and check that it computes correctly.
        Device {
            /// `cpu` (burn flex) or `wgpu` (the GPU through Vulkan/Metal/DX12).
            #[arg(long, default_value = "wgpu")]
            backend: String,
            /// Print the report as JSON.
            #[arg(long)]
            json: bool,
            /// The kernel path to report on: `coop`, `subgroup-f16` or `f32` (also `KONTEXT_KERNELS`); a path
            /// the adapter lacks is an error. Without it, the adapter's best.
            #[arg(long)]
            kernels: Option<String>,
        },
        /// Edit reference images (or make an image from text) with FLUX.1 Kontext.
        Edit(super::generate::EditArgs),
        /// Run one edit with every step computed and write the model's magnitude ratios, which MagCache
        /// (`kontext edit --cache mag:… --cache-ratios FILE`) needs, as diffusers' `calibrate=True` measures them.
        CalibrateCache(super::generate::CalibrateArgs),
        /// The memory plan of an edit for a file set, an output size and `--gpu-memory`: the phases and their
        /// peaks, what stays on the device, and whether it fits or what would (reads file headers only).
        Plan(super::generate::PlanArgs),
        /// One DiT call on inputs named like diffusers' transformer arguments; writes `out`.
        Forward(super::generate::ForwardArgs),
        /// Write a random-weight Flux DiT as a GGUF file with real names and shapes (no download needed): the
        /// step model of a `kontext bench` preset, FLUX.1 Kontext [dev] by default (`gpu`; 6.7 GB in Q4_0).
        MakeRandom {
            /// The file to write.
            #[arg(long)]
            out: std::path::PathBuf,
            /// Block type of the linear weights: `Q4_0` or `Q8_0`.
            #[arg(long = "type", default_value = "Q4_0")]
            ty: String,
            /// The `kontext bench` preset whose DiT to write: `gpu` (FLUX.1 Kontext [dev]), `full`, `quick`, `tiny`.
            #[arg(long, default_value = "gpu")]
            preset: String,
        },
        /// Recognise a weight file from its header (no tensor data is read): format, architecture, Flux
        /// configuration, tensor types, parameters and bytes.
        Inspect {
            /// A .safetensors or .gguf file, a *.safetensors.index.json, or a diffusers model directory.
            path: std::path::PathBuf,
            /// Print the result as JSON.
            #[arg(long)]
            json: bool,
            /// Also load the transformer file on `--backend` and report the bytes its weights hold there
            /// (`device_bytes`) against the tensor data bytes of the file (`file_bytes`).
            #[arg(long)]
            load: bool,
            /// With `--load`: `cpu` (burn flex) or `wgpu` (the GPU).
            #[arg(long, default_value = "wgpu", requires = "load")]
            backend: String,
            /// With `--load`: a diffusers model folder whose `transformer/config.json` completes the config.
            #[arg(long, requires = "load")]
            model: Option<std::path::PathBuf>,
        },
    }

    pub fn main() -> std::process::ExitCode {
        let cli = Cli::parse();
        if let Some(bytes) = std::env::var(faults::INJECT_OUT_OF_MEMORY_ENV).ok().and_then(|v| v.trim().parse().ok()) {
            faults::inject_out_of_memory_after(Some(bytes));
        }
        match run(cli.command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(Error::MissingPart { part, file, flag, folder_path }) => {
                eprintln!("kontext: no {part}: give {flag} FILE ({file}), or --model DIR with {folder_path}");
                std::process::ExitCode::FAILURE
            }
            Err(e @ Error::OverBudget { .. }) => {
                let line = e.to_string().replace("more than the budget of", "more than --gpu-memory");
                eprintln!(
                    "kontext: {}",
                    line.replace("nothing smaller fits either", "nothing smaller fits either: raise --gpu-memory")
                );
                std::process::ExitCode::FAILURE
            }
            Err(e @ Error::OutOfMemory { .. }) => {
                let line = e.to_string().replace("try a GPU memory budget of", "try --gpu-memory");
                eprintln!("kontext: {}", line.replace("try a lower GPU memory budget", "try a lower --gpu-memory"));
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("kontext: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    fn run(command: Command) -> Result<()> {
        match command {
            Command::Device { backend, json, kernels } => device_report(backend.parse()?, json, kernels.as_deref()),
            Command::Inspect { path, json, load: false, .. } => inspect(&path, json),
            Command::Inspect { path, json, load: true, backend, model } => {
                inspect_loaded(&path, json, backend.parse()?, model.as_deref())
            }
            Command::Bench(args) => super::bench::run(args),
            Command::Edit(args) => super::generate::edit(args),
            Command::CalibrateCache(args) => super::generate::calibrate_cache(args),
            Command::Forward(args) => super::generate::forward(args),
            Command::Plan(args) => super::generate::plan(args),
            Command::MakeRandom { out, ty, preset } => make_random(&out, &ty, &preset),
        }
    }

    fn make_random(out: &std::path::Path, ty: &str, preset: &str) -> Result<()> {
        let ty = match ty {
            "Q4_0" => kontext_web::formats::quant::GgmlType::Q4_0,
            "Q8_0" => kontext_web::formats::quant::GgmlType::Q8_0,
            other => return Err(Error::Invalid(format!("--type {other}: random weights are Q4_0 or Q8_0"))),
        };
        let config = kontext_web::harness::bench::Sizes::preset(preset)?.step_config;
        let failed = |e: std::io::Error| Error::Invalid(format!("cannot write {}: {e}", out.display()));
        let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(failed)?);
        let written = kontext_web::harness::bench::write_random_flux(&mut file, &config, ty)
            .and_then(|bytes| std::io::Write::flush(&mut file).map(|()| bytes).map_err(failed));
        let bytes = written.inspect_err(|_| _ = std::fs::remove_file(out))?;
        println!("{}: a random-weight Flux ({preset} preset, {ty}), {bytes} bytes", out.display());
        Ok(())
    }

    fn inspect(path: &std::path::Path, json: bool) -> Result<()> {
        let report = kontext_web::model::inspect::inspect_path(path)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?);
            return Ok(());
        }
        println!("format        {}", report.format);
        println!("architecture  {}", report.architecture.as_deref().unwrap_or("unknown"));
        match &report.config {
            Some(config) => {
                println!("config");
                let value = serde_json::to_value(config).map_err(|e| Error::Invalid(e.to_string()))?;
                for (key, value) in value.as_object().into_iter().flatten() {
                    println!("  {key:<20} {value}");
                }
            }
            None => println!("config        none"),
        }
        let dtypes: Vec<String> = report.dtypes.iter().map(|(ty, n)| format!("{n} {ty}")).collect();
        println!("tensors       {} ({})", report.tensors, dtypes.join(", "));
        println!("params        {} ({})", report.params, scaled(report.params, ["", " K", " M", " B"]));
        println!("bytes         {} ({})", report.bytes, scaled(report.bytes, [" B", " kB", " MB", " GB"]));
        Ok(())
    }

    fn inspect_loaded(
        path: &std::path::Path,
        json: bool,
        backend: Backend,
        model: Option<&std::path::Path>,
    ) -> Result<()> {
        let report = kontext_web::model::inspect::inspect_path(path)?;
        if !path.is_file() {
            return Err(Error::Invalid(format!("--load needs a transformer file, not {}", path.display())));
        }
        let folder: Box<dyn ModelFiles> = match model {
            Some(dir) if dir.is_dir() => Box::new(Folder(dir.to_path_buf())),
            Some(dir) => return Err(Error::Invalid(format!("--model {}: not a directory", dir.display()))),
            None => Box::new(NoFolder),
        };
        let device = device::open(backend)?;
        let (flux, _) = loader::load_transformer(folder.as_ref(), Some(Box::new(FileSource::open(path)?)), &device)?;
        let (file_bytes, device_bytes, packed) = (report.bytes, flux.device_bytes() as u64, flux.packed_linears());
        let linears = flux.projections().len();
        if json {
            let mut value = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
            if let Some(object) = value.as_object_mut() {
                object.insert("backend".into(), serde_json::json!(backend));
                object.insert("file_bytes".into(), file_bytes.into());
                object.insert("device_bytes".into(), device_bytes.into());
                object.insert("linears".into(), linears.into());
                object.insert("packed_linears".into(), packed.into());
            }
            println!("{}", serde_json::to_string_pretty(&value).map_err(|e| Error::Invalid(e.to_string()))?);
            return Ok(());
        }
        inspect(path, false)?;
        println!("file bytes    {file_bytes} ({})", scaled(file_bytes, [" B", " kB", " MB", " GB"]));
        println!("device bytes  {device_bytes} ({}) on {backend:?}", scaled(device_bytes, [" B", " kB", " MB", " GB"]));
        println!("packed        {packed} of {linears} linear layers");
        Ok(())
    }

    /// `n` in thousands, millions or billions of `units`, with two decimals.
    fn scaled(n: u64, units: [&str; 4]) -> String {
        let (mut value, mut unit) = (n as f64, 0);
        while value >= 1000.0 && unit < 3 {
            value /= 1000.0;
            unit += 1;
        }
        format!("{value:.2}{}", units[unit])
    }

    fn device_report(backend: Backend, json: bool, kernels: Option<&str>) -> Result<()> {
        let (device, adapter) = match backend {
            Backend::Cpu => (device::cpu(), None),
            Backend::Wgpu => {
                let (device, report) = device::wgpu()?;
                (device, Some(report))
            }
        };
        super::choose_kernels(kernels, None, &device)?;
        let paths = kontext_web::kernels::report::KernelPaths::of(&device);
        let check = pollster::block_on(selfcheck::matmul_check(&device, 64, quant_matmul::self_check_multiply))?;
        if json {
            let value = serde_json::json!({
                "backend": backend, "adapter": adapter, "kernels": paths, "self_check": check
            });
            println!("{}", serde_json::to_string_pretty(&value).map_err(|e| Error::Invalid(e.to_string()))?);
        } else {
            match &adapter {
                Some(a) => {
                    println!("adapter      {} ({}{})", a.name, a.api, if a.software { ", software" } else { "" });
                    println!("driver       {}", a.driver);
                    println!("max buffer   {} bytes", a.max_buffer_size);
                    println!("max binding  {} bytes", a.max_storage_buffer_binding_size);
                    println!("shader-f16   {}", a.shader_f16);
                    println!("subgroups    {}", a.subgroups);
                    let products = a.cooperative_matrix.join(", ");
                    println!("coop matrix  {}", if products.is_empty() { "none" } else { &products });
                }
                None => println!("backend      cpu (burn flex)"),
            }
            let available: Vec<&str> = paths.available.iter().map(|p| p.name()).collect();
            println!("kernels      {} (available: {})", paths.chosen, available.join(", "));
            println!("  matmul     {}", paths.matmul);
            println!("  attention  {}", paths.attention);
            println!(
                "self-check   {}: {n}×{n} matmul, max error {:.2e}",
                if check.passed { "passed" } else { "FAILED" },
                check.max_abs_error,
                n = check.size
            );
        }
        if check.passed { Ok(()) } else { Err(Error::Gpu("the device miscomputes a matmul".into())) }
    }
}

/// Settles the kernel path on `device` (and with it the precision of the plain kernels) from `--kernels`
/// (else `KONTEXT_KERNELS`) and `--precision` (else `KONTEXT_PRECISION`), else the adapter's best; returns it.
#[cfg(not(target_arch = "wasm32"))]
fn choose_kernels(
    kernels: Option<&str>,
    precision: Option<&str>,
    device: &burn::tensor::Device,
) -> kontext_web::Result<kontext_web::kernels::path::KernelPath> {
    use kontext_web::kernels::{path::KernelPath, precision::Precision};
    let given = |flag: Option<&str>, env: &str| flag.map(str::to_string).or_else(|| std::env::var(env).ok());
    let kernels = given(kernels, "KONTEXT_KERNELS").map(|name| name.parse::<KernelPath>()).transpose()?;
    let precision = given(precision, "KONTEXT_PRECISION").map(|name| name.parse::<Precision>()).transpose()?;
    KernelPath::choose(KernelPath::requested(kernels, precision)?, device)
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
