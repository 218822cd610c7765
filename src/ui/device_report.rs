//! The device report: can this browser run the model, on which adapter, within which limits.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::format_bytes;
use crate::app::{AppState, CheckState, send};
use crate::web::probe::{self, Adapter, BrowserReport, Storage, WebGpu};
use crate::web::protocol::ToWorker;

/// Matrix side of the GPU self-check run in the worker.
const SELF_CHECK_SIZE: usize = 64;

/// Probes WebGPU and storage in the page, and runs a matmul self-check on the GPU inside the worker.
#[component]
pub fn DeviceReport() -> impl IntoView {
    let state = expect_context::<AppState>();
    let (report, set_report) = signal(None::<BrowserReport>);
    spawn_local(async move {
        let probed = probe::probe().await;
        let has_gpu = matches!(probed.webgpu, WebGpu::Available(_));
        set_report.set(Some(probed));
        if has_gpu {
            state.check.set(Some(CheckState::Running));
            if let Err(e) = send(&ToWorker::SelfCheck { size: SELF_CHECK_SIZE }) {
                state.check.set(Some(CheckState::Failed(e)));
            }
        }
    });
    let check = state.check.read_only();
    view! {
        <section class="card" id="device-report" aria-labelledby="device-report-title">
            <h2 id="device-report-title">"Your device"</h2>
            {move || match report.get() {
                None => view! { <p class="muted">"Checking your browser…"</p> }.into_any(),
                Some(report) => view! { <ReportBody report=report check=check /> }.into_any(),
            }}
        </section>
    }
}

/// The report once probed.
#[component]
fn ReportBody(
    /// What the probe found.
    report: BrowserReport,
    /// The self-check state, `None` when there is no GPU to check.
    check: ReadSignal<Option<CheckState>>,
) -> impl IntoView {
    let gpu = match report.webgpu {
        WebGpu::Available(adapter) => view! { <AdapterRows adapter=adapter check=check /> }.into_any(),
        WebGpu::Missing => view! { <NoWebGpu reason="This browser does not offer WebGPU.".to_string() /> }.into_any(),
        WebGpu::NoAdapter(why) => {
            view! { <NoWebGpu reason=format!("WebGPU is present but gave no GPU adapter ({why}).") /> }.into_any()
        }
    };
    view! {
        {gpu}
        <StorageRows storage=report.storage />
    }
}

/// Adapter name, limits and features, and the self-check.
#[component]
fn AdapterRows(
    /// The adapter the browser offered.
    adapter: Adapter,
    /// The self-check state.
    check: ReadSignal<Option<CheckState>>,
) -> impl IntoView {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let check_state = move || match check.get() {
        None | Some(CheckState::Running) => "running",
        Some(CheckState::Done { passed: true, .. }) => "passed",
        Some(CheckState::Done { passed: false, .. }) | Some(CheckState::Failed(_)) => "failed",
    };
    let check_text = move || match check.get() {
        None | Some(CheckState::Running) => "running a test computation in the worker…".to_string(),
        Some(CheckState::Done { passed, max_abs_error, millis }) => format!(
            "{} — {SELF_CHECK_SIZE}×{SELF_CHECK_SIZE} matmul, largest error {max_abs_error:.1e}, {millis:.0} ms",
            if passed { "correct" } else { "WRONG results: this GPU or driver miscomputes" }
        ),
        Some(CheckState::Failed(message)) => format!("could not run: {message}"),
    };
    let display = expect_context::<AppState>().display;
    let display_text = move || match display.get().as_deref() {
        None => "known after the GPU check".to_string(),
        Some("webgpu") => "drawn by the GPU (WebGPU canvas): previews read nothing back".to_string(),
        Some("2d") => {
            "2D canvas: one readback per preview (on software adapters, where presenting a WebGPU canvas can lose the \
             device, or as asked with ?display=2d)"
                .to_string()
        }
        Some(other) => other.to_string(),
    };
    let kernels = expect_context::<AppState>().kernels;
    let kernels_text = move || match kernels.get() {
        None => "known after the GPU check".to_string(),
        Some(k) => {
            let available: Vec<&str> = k.available.iter().map(|p| p.name()).collect();
            let subgroups = k.subgroup_size.map(|n| format!(" with subgroups of {n}")).unwrap_or_default();
            format!(
                "{}: matmuls {}, attention {}{subgroups} (this GPU can run {})",
                k.chosen,
                k.matmul,
                k.attention,
                available.join(", ")
            )
        }
    };
    let chosen = move || kernels.get().map(|k| k.chosen.name()).unwrap_or_default();
    view! {
        <p class="status ok" data-field="webgpu">"WebGPU is available."</p>
        {adapter.fallback.then(|| view! {
            <p class="status warn">"This is a software adapter: everything works, but very slowly."</p>
        })}
        <dl class="facts">
            <dt>"Adapter"</dt><dd data-field="adapter">{adapter.name}</dd>
            <dt>"Largest buffer"</dt><dd data-field="max-buffer-size">{format_bytes(adapter.max_buffer_size)}</dd>
            <dt>"Largest storage binding"</dt>
            <dd data-field="max-storage-binding">{format_bytes(adapter.max_storage_buffer_binding_size)}</dd>
            <dt>"shader-f16"</dt><dd data-field="shader-f16">{yes_no(adapter.shader_f16)}</dd>
            <dt>"subgroups"</dt><dd data-field="subgroups">{yes_no(adapter.subgroups)}</dd>
            <dt>"GPU check"</dt><dd id="self-check" data-state=check_state>{check_text}</dd>
            <dt>"Kernels"</dt><dd data-field="kernels" data-path=chosen>{kernels_text}</dd>
            <dt>"Result canvas"</dt><dd data-field="display" data-path=move || display.get().unwrap_or_default()>{display_text}</dd>
        </dl>
    }
}

/// Why nothing will run here, and what would.
#[component]
fn NoWebGpu(
    /// What the probe found.
    reason: String,
) -> impl IntoView {
    view! {
        <div class="status bad" data-field="webgpu" role="alert">
            <p><strong>{reason}</strong>" Kontext runs the model on your GPU through WebGPU, so it cannot run here."</p>
            <p>"Browsers that work:"</p>
            <ul>
                <li>"Chrome or Edge 113 and later on Windows, macOS and ChromeOS; Chrome 121 and later on Android 12+."</li>
                <li>"Chrome on Linux: enable chrome://flags/#enable-unsafe-webgpu and make sure Vulkan drivers are installed."</li>
                <li>"Safari 26 and later on macOS, iOS and iPadOS."</li>
                <li>"Firefox 141 and later on Windows; elsewhere set dom.webgpu.enabled in about:config."</li>
            </ul>
            <p>"If your browser is listed, check that hardware acceleration is on and that your GPU driver is up to date."</p>
        </div>
    }
}

/// Quota, usage and persistence of this origin's storage.
#[component]
fn StorageRows(
    /// Storage as probed, `None` when the browser has no StorageManager.
    storage: Option<Storage>,
) -> impl IntoView {
    match storage {
        None => view! {
            <p class="status warn" data-field="storage">"This browser does not report storage: downloaded models may not be kept."</p>
        }
        .into_any(),
        Some(s) => {
            let unknown = || "unknown".to_string();
            view! {
                <dl class="facts" data-field="storage">
                    <dt>"Storage quota"</dt><dd data-field="quota">{s.quota.map(format_bytes).unwrap_or_else(unknown)}</dd>
                    <dt>"Storage used"</dt><dd data-field="usage">{s.usage.map(format_bytes).unwrap_or_else(unknown)}</dd>
                    <dt>"Persistent"</dt>
                    <dd data-field="persisted">{match s.persisted {
                        Some(true) => "yes: the browser will not evict downloaded models".to_string(),
                        Some(false) => "no: the browser may evict downloaded models when disk runs low".to_string(),
                        None => unknown(),
                    }}</dd>
                </dl>
            }
            .into_any()
        }
    }
}
