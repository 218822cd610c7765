//! `kontext`: the native command line over the same model code as the web app.

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use kontext_web::device::{self, Backend};
    use kontext_web::{Error, Result, selfcheck};

    #[derive(Parser)]
    #[command(name = "kontext", version, about = "FLUX.1 Kontext [dev] image editing: the native CLI of kontext-web")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Report the compute device (adapter, limits, features) and check that it computes correctly.
        Device {
            /// `cpu` (burn flex) or `wgpu` (the GPU through Vulkan/Metal/DX12).
            #[arg(long, default_value = "wgpu")]
            backend: String,
            /// Print the report as JSON.
            #[arg(long)]
            json: bool,
        },
    }

    pub fn main() -> std::process::ExitCode {
        let cli = Cli::parse();
        match run(cli.command) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kontext: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    fn run(command: Command) -> Result<()> {
        match command {
            Command::Device { backend, json } => device_report(backend.parse()?, json),
        }
    }

    fn device_report(backend: Backend, json: bool) -> Result<()> {
        let (device, adapter) = match backend {
            Backend::Cpu => (device::cpu(), None),
            Backend::Wgpu => {
                let (device, report) = device::wgpu()?;
                (device, Some(report))
            }
        };
        let check = pollster::block_on(selfcheck::matmul_check(&device, 64))?;
        if json {
            let value = serde_json::json!({ "backend": backend, "adapter": adapter, "self_check": check });
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
                }
                None => println!("backend      cpu (burn flex)"),
            }
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

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
