//! `kontext bench`: packed against f32 matmuls, flash against reference attention and one DiT step, measured side
//! by side on one device ([`kontext_web::bench`]).

use kontext_web::bench::{self, Report, Sizes};
use kontext_web::device::{self, Backend};
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
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Activations of the packed matmuls in the DiT step: `f16` (the default where the adapter has
    /// `shader-f16`) or `f32`; also `KONTEXT_PRECISION`. The matmul table measures both either way.
    #[arg(long)]
    precision: Option<String>,
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
    super::choose_precision(args.precision.as_deref(), &device)?;
    let sizes = match (args.quick, args.tiny) {
        (_, true) => Sizes::tiny(),
        (true, _) => Sizes::quick(),
        _ => Sizes::full(),
    };
    let report = bench::run(&device, &args.backend, adapter, sizes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Report) {
    let sizes = &report.sizes;
    println!("device    {} ({})", report.adapter.as_deref().unwrap_or("CPU"), report.backend);
    println!("preset    {}, {} timed calls per figure after one warm-up", sizes.preset, sizes.repeats);
    println!();
    println!("matmul x [M, K] · Wᵀ [K → N]: packed ggml blocks vs burn f32 (GFLOP/s; ratio = packed / f32)");
    println!("  f16: the packed kernel with f16 activations; +cast: with x cast to f16 and y back to f32, as the");
    println!("  model runs it; f16/pk and f16/f32: f16 against the f32-activation packed kernel and burn's f32");
    println!(
        "{:<6} {:>6} {:>6} {:>6} {:>7} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>7}",
        "type", "M", "K", "N", "packed", "packed", "f32", "ratio", "f16", "f16+cast", "f16/pk", "f16/f32"
    );
    let or_dash = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    for r in &report.matmul {
        println!(
            "{:<6} {:>6} {:>6} {:>6} {:>7} {:>10.2} {:>10.2} {:>7.2} {:>10} {:>10} {:>7} {:>7}",
            r.ty,
            r.m,
            r.k,
            r.n,
            r.packed,
            r.packed_gflops,
            r.f32_gflops,
            r.ratio,
            or_dash(r.f16_gflops),
            or_dash(r.f16_cast_gflops),
            or_dash(r.f16_ratio_to_packed),
            or_dash(r.f16_ratio_to_f32)
        );
    }
    println!();
    println!(
        "attention, {} heads × {}: ms per call; intermediates in MiB computed from the shapes, not measured",
        sizes.attention_heads, sizes.attention_d
    );
    if report.attention.iter().any(|r| !r.flash_kernel) {
        println!("(no flash kernel on this device: the `flash` column times the reference too)");
    }
    println!("{:>6} {:>10} {:>10} {:>8} {:>11} {:>11}", "L", "flash ms", "ref ms", "speedup", "flash MiB", "ref MiB");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for r in &report.attention {
        let reference = r.reference_s.map_or("skipped".into(), |s| format!("{:.2}", s * 1e3));
        let speedup = r.speedup.map_or("-".into(), |s| format!("{s:.2}"));
        println!(
            "{:>6} {:>10.2} {:>10} {:>8} {:>11.2} {:>11.2}",
            r.l,
            r.flash_s * 1e3,
            reference,
            speedup,
            mib(r.flash_bytes),
            mib(r.reference_bytes)
        );
    }
    println!();
    let c = &sizes.step_config;
    println!(
        "DiT step: hidden {}, {} heads, {} double + {} single blocks, {} image + {} text tokens, random weights",
        c.hidden_size, c.num_heads, c.depth, c.depth_single_blocks, sizes.step_image_tokens, sizes.step_text_tokens
    );
    println!("packed matmuls with {} activations", report.precision);
    println!("{:<8} {:>8} {:>12} {:>10} {:>8}", "weights", "packed", "device MiB", "s/step", "vs f32");
    for r in &report.step {
        println!(
            "{:<8} {:>8} {:>12.1} {:>10.3} {:>8.2}",
            r.weights,
            r.packed_linears,
            mib(r.device_bytes),
            r.seconds,
            r.ratio_to_f32
        );
    }
}
