//! `kontext bench`: packed against f32 matmuls, flash against reference attention and one DiT step, measured side
//! by side on one device ([`kontext_web::harness::bench`]).

use kontext_web::device::{self, Backend};
use kontext_web::harness::bench::{self, Report, Sizes, StepRow};
use kontext_web::kernels::precision::Precision;
use kontext_web::{Error, Result};

/// Options of `kontext bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// `cpu` (burn flex) or `wgpu` (the GPU through Vulkan/Metal/DX12).
    #[arg(long, default_value = "wgpu")]
    backend: String,
    /// Smaller shapes: seconds on a software device.
    #[arg(long)]
    quick: bool,
    /// The smallest shapes that still run every path (for tests).
    #[arg(long, conflicts_with = "quick")]
    tiny: bool,
    /// A named preset instead: `full` (the default), `quick`, `tiny`, `gpu` (FLUX.1 Kontext [dev] at real
    /// scale, 1024² with one reference: for a real GPU) or `gpu-512`.
    #[arg(long, conflicts_with_all = ["quick", "tiny"])]
    preset: Option<String>,
    /// Run only these benchmarks (comma-separated): `matmul`, `attention`, `step`, `cache`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Also time the same DiT step through diffusers (PyTorch, f32, this machine's CPU) with this Python, which
    /// needs torch and diffusers (`tests/bench/diffusers_step.py`): the peer figure.
    #[arg(long, value_name = "PYTHON")]
    peer: Option<std::path::PathBuf>,
    /// What the packed matmuls of the DiT step compute in: `f32` (the default) or `f16` (adapters with
    /// `shader-f16`); also `KONTEXT_PRECISION`. The matmul table measures both either way.
    #[arg(long)]
    precision: Option<String>,
    /// The kernel path of the DiT step: `coop`, `subgroup-f16` or `f32` (also `KONTEXT_KERNELS`); without it,
    /// the adapter's best. The matmul table measures every path the adapter has either way.
    #[arg(long)]
    kernels: Option<String>,
}

/// The DiT step through diffusers on the CPU, as `tests/bench/diffusers_step.py` reports it.
#[derive(serde::Serialize, serde::Deserialize)]
struct PeerStep {
    seconds: f64,
    torch: String,
    diffusers: String,
    threads: usize,
}

/// Runs `tests/bench/diffusers_step.py` with `python` on the step of `sizes`.
fn peer_step(python: &std::path::Path, sizes: &Sizes) -> Result<PeerStep> {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/diffusers_step.py");
    let c = &sizes.step_config;
    let config = serde_json::json!({
        "hidden": c.hidden_size, "heads": c.num_heads, "depth": c.depth, "single": c.depth_single_blocks,
        "context": c.context_in_dim, "vec_in_dim": c.vec_in_dim, "in_channels": c.in_channels, "axes_dim": c.axes_dim,
        "image_tokens": sizes.step_image_tokens, "text_tokens": sizes.step_text_tokens, "repeats": sizes.repeats,
    });
    let failed = |e: String| Error::Invalid(format!("--peer {}: {e}", python.display()));
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    child.stdin.take().expect("piped").write_all(config.to_string().as_bytes()).map_err(|e| failed(e.to_string()))?;
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(stderr.lines().last().unwrap_or("failed").to_string()));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unexpected output ({e})")))
}

/// Runs the benchmarks and prints a table or JSON.
pub fn run(args: BenchArgs) -> Result<()> {
    let backend: Backend = args.backend.parse()?;
    let (device, adapter) = match backend {
        Backend::Cpu => (device::cpu(), None),
        Backend::Wgpu => {
            let (device, report) = device::wgpu()?;
            (device, Some(report.name))
        }
    };
    super::choose_kernels(args.kernels.as_deref(), args.precision.as_deref(), &device)?;
    let sizes = match (args.quick, args.tiny, &args.preset) {
        (_, true, _) => Sizes::tiny(),
        (true, _, _) => Sizes::quick(),
        (_, _, Some(name)) => Sizes::preset(name)?,
        _ => Sizes::full(),
    };
    let sizes = if args.only.is_empty() { sizes } else { sizes.only(&args.only)? };
    let report = bench::run(&device, &args.backend, adapter, sizes)?;
    let peer = args.peer.as_deref().map(|python| peer_step(python, &report.sizes)).transpose()?;
    if args.json {
        let mut json = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        json["peer"] = serde_json::to_value(&peer).map_err(|e| Error::Invalid(e.to_string()))?;
        println!("{}", serde_json::to_string_pretty(&json).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        print_table(&report);
        if let Some(peer) = &peer {
            print_peer(&report, peer);
        }
    }
    let off = report.off_reference();
    if !off.is_empty() {
        return Err(Error::Invalid(format!("kernels computed off their reference:\n  {}", off.join("\n  "))));
    }
    Ok(())
}

/// A step row's weights, `streamed` and `f16` where they apply.
fn row_name(r: &StepRow) -> String {
    let streamed = if r.streamed { " streamed" } else { "" };
    let f16 = if r.precision == Precision::F16 { " f16" } else { "" };
    format!("{}{streamed}{f16}", r.weights)
}

fn print_peer(report: &Report, peer: &PeerStep) {
    println!();
    println!(
        "peer: the same step through diffusers {} (torch {}, f32, CPU, {} threads): {:.3} s/step",
        peer.diffusers, peer.torch, peer.threads, peer.seconds
    );
    println!("{:<16} {:>10} {:>14}", "weights", "s/step", "peer / ours");
    for r in &report.step {
        println!("{:<16} {:>10.3} {:>14.2}", row_name(r), r.seconds, peer.seconds / r.seconds);
    }
}

fn print_table(report: &Report) {
    let sizes = &report.sizes;
    println!("device    {} ({})", report.adapter.as_deref().unwrap_or("CPU"), report.backend);
    let k = &report.kernels;
    let available: Vec<&str> = k.available.iter().map(|p| p.name()).collect();
    println!(
        "kernels   {} (available: {}): matmul {}, attention {}",
        k.chosen,
        available.join(", "),
        k.matmul,
        k.attention
    );
    println!("preset    {}, {} timed calls per figure after one warm-up", sizes.preset, sizes.repeats);
    println!();
    let tuned = if report.burn_autotune { "autotuned" } else { "untuned: a build without --features autotune" };
    println!("matmul x [M, K] · Wᵀ [K → N]: packed ggml blocks vs burn f32 ({tuned}) (GFLOP/s; ratio = packed / f32)");
    println!("  f16: the packed kernel computing in f16 (x and y f32, as the model runs it with --precision f16);");
    println!("  f16/pk and f16/f32: f16 against the packed kernel computing in f32 and against burn's f32");
    println!(
        "  coop: the packed kernel on cooperative matrices (f16 fragments, f32 sums) in the tiles the model takes"
    );
    println!("  here; coop/pk against f32; tiles: GFLOP/s in each side of tile, the model's marked *");
    println!("  f16 err, coop err: relative RMS of their output against the packed kernel's in f32, same x");
    println!("  path: the kernel path the model's matmul of that shape takes here");
    println!(
        "{:<6} {:>6} {:>6} {:>6} {:>7} {:>10} {:>10} {:>7} {:>10} {:>7} {:>7} {:>10} {:>7} {:>24} {:>9} {:>9} {:>12}",
        "type",
        "M",
        "K",
        "N",
        "packed",
        "packed",
        "f32",
        "ratio",
        "f16",
        "f16/pk",
        "f16/f32",
        "coop",
        "coop/pk",
        "tiles",
        "f16 err",
        "coop err",
        "path"
    );
    let or_dash = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let error = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1e}"));
    for r in &report.matmul {
        let tiles: Vec<String> = (r.coop_by_tile.iter())
            .map(|t| format!("{}{}: {:.1}", t.tile, if Some(t.tile) == r.coop_tile { "*" } else { "" }, t.gflops))
            .collect();
        let tiles = if tiles.is_empty() { "-".to_string() } else { tiles.join(" ") };
        println!(
            "{:<6} {:>6} {:>6} {:>6} {:>7} {:>10.2} {:>10.2} {:>7.2} {:>10} {:>7} {:>7} {:>10} {:>7} {:>24} {:>9} {:>9} {:>12}",
            r.ty,
            r.m,
            r.k,
            r.n,
            r.packed,
            r.packed_gflops,
            r.f32_gflops,
            r.ratio,
            or_dash(r.f16_gflops),
            or_dash(r.f16_ratio_to_packed),
            or_dash(r.f16_ratio_to_f32),
            or_dash(r.coop_gflops),
            or_dash(r.coop_ratio_to_packed),
            tiles,
            error(r.f16_rel_rms),
            error(r.coop_rel_rms),
            r.kernel_path
        );
    }
    println!();
    println!(
        "attention, {} heads × {}: ms per call of the model's attention (its kernel), of each flash kernel and of the \
         reference (materialised scores in blocks of ≤ 128 MiB); speedup = reference / flash; MiB computed from the \
         shapes (flash intermediates, all scores), and peak MiB measured (memory the first call added to the device \
         allocator's pools; `-` where the backend does not report them); worst err: the largest relative RMS of \
         the model's attention and each kernel's output against the reference's",
        sizes.attention_heads, sizes.attention_d,
    );
    println!(
        "{:>6} {:>22} {:>10} {:>8} {:>10} {:>10} {:>8} {:>10} {:>8} {:>11} {:>11} {:>11} {:>11} {:>9}",
        "L",
        "model (kernel)",
        "flash ms",
        "TFLOP/s",
        "rows ms",
        "coop ms",
        "TFLOP/s",
        "ref ms",
        "speedup",
        "flash MiB",
        "scores MiB",
        "flash peak",
        "ref peak",
        "worst err"
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let peak = |b: Option<u64>| b.map_or("-".to_string(), |b| format!("{:.2}", mib(b)));
    let ms = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.2}"));
    for r in &report.attention {
        println!(
            "{:>6} {:>22} {:>10} {:>8} {:>10} {:>10} {:>8} {:>10.2} {:>8} {:>11.2} {:>11.2} {:>11} {:>11} {:>9.1e}",
            r.l,
            format!("{:.2} ({}, {})", r.model_ms, r.model_kernel.name(), r.kernel_path),
            ms(r.flash_ms),
            r.flash_tflops.map_or("-".into(), |t| format!("{t:.3}")),
            ms(r.rows_ms),
            ms(r.coop_ms),
            r.coop_tflops.map_or("-".into(), |t| format!("{t:.3}")),
            r.reference_ms,
            r.flash_speedup.map_or("-".into(), |s| format!("{s:.2}")),
            mib(r.flash_bytes),
            mib(r.reference_bytes),
            peak(r.flash_peak_bytes),
            peak(r.reference_peak_bytes),
            [r.flash_rel_rms, r.rows_rel_rms, r.coop_rel_rms].into_iter().flatten().fold(r.model_rel_rms, f64::max)
        );
    }
    println!();
    let c = &sizes.step_config;
    println!(
        "DiT step: hidden {}, {} heads, {} double + {} single blocks, {} image + {} text tokens, random weights",
        c.hidden_size, c.num_heads, c.depth, c.depth_single_blocks, sizes.step_image_tokens, sizes.step_text_tokens
    );
    println!("packed matmuls on the {} path (subgroup-f16 where a row says f16)", report.kernels.matmul);
    println!("plain s: the same step with our kernels off (dense f32 weights, burn's ops); speedup = plain / ours");
    println!("launches: kernel dispatches (ours and burn's) per transformer call and per double/single block, counted");
    println!(
        "{:<16} {:>8} {:>12} {:>12} {:>10} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8}",
        "weights",
        "packed",
        "device MiB",
        "peak MiB",
        "s/step",
        "vs f32",
        "plain s",
        "speedup",
        "launches",
        "double",
        "single"
    );
    let count = |n: Option<usize>| n.map_or("-".to_string(), |n| n.to_string());
    for r in &report.step {
        let peak = r.peak_device_bytes.map_or("—".to_string(), |b| format!("{:.1}", mib(b)));
        println!(
            "{:<16} {:>8} {:>12.1} {:>12} {:>10.3} {:>8.2} {:>9} {:>8} {:>10} {:>8} {:>8}",
            row_name(r),
            r.packed_linears,
            mib(r.device_bytes),
            peak,
            r.seconds,
            r.ratio_to_f32,
            r.plain_seconds.map_or("-".into(), |s| format!("{s:.3}")),
            r.speedup_over_plain.map_or("-".into(), |s| format!("{s:.2}")),
            count(r.dispatches_per_step),
            count(r.dispatches_per_double_block()),
            count(r.dispatches_per_single_block()),
        );
    }
    if let (Some(bytes), Some(minimum)) = (report.activation_bytes_per_step, report.activation_bytes_minimum) {
        println!(
            "activation bytes per step, counted at our launches (each binding once): {:.1} MiB; minimum (each \
             activation written and read once): {:.1} MiB; {:.2}× the minimum",
            mib(bytes),
            mib(minimum),
            bytes as f64 / minimum as f64
        );
    }
    if let Some(r) = Report::counted_step(&report.step) {
        for (block, kernels) in [("double", &r.double_block_kernels), ("single", &r.single_block_kernels)] {
            let listed: Vec<String> = kernels.iter().map(|(name, n)| format!("{n} × {name}")).collect();
            println!("{block} block launches ({}): {}", r.weights, listed.join(", "));
        }
    }
    if let Some(first) = report.cache.first() {
        println!();
        println!(
            "step caches: a text-to-image edit of {} steps on the DiT step model (Q8_0, random weights: the steps \
             saved are exact, what they cost in quality cannot be judged); evaluations = steps that ran every block; \
             mag uses the ratios of a calibrating run of the same edit",
            first.steps
        );
        println!("{:<16} {:>12} {:>10} {:>9}  reused steps", "cache", "evaluations", "seconds", "speedup");
        for r in &report.cache {
            let reused: Vec<String> = r.reused_steps.iter().map(usize::to_string).collect();
            println!(
                "{:<16} {:>12} {:>10.2} {:>9.2}  {}",
                r.cache,
                format!("{}/{}", r.evaluations, r.steps),
                r.seconds,
                r.speedup,
                if reused.is_empty() { "-".to_string() } else { reused.join(",") }
            );
        }
    }
    if let Some(p) = &report.previews {
        println!();
        println!(
            "live previews: that edit, {} steps, waiting for the queue after each step as the app does; with a \
             preview drawn on the GPU after every step against none, side by side",
            p.steps
        );
        println!(
            "previews off {:.3} s/step · on {:.3} s/step · overhead {:+.1} % · readbacks during the steps: {} on, {} \
             off · in the whole edit with previews: {}",
            p.seconds_per_step_off,
            p.seconds_per_step_on,
            100.0 * p.overhead,
            p.step_readbacks_on,
            p.step_readbacks_off,
            p.readbacks_on
        );
    }
}
