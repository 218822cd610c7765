//! What this browser offers: WebGPU (adapter, limits, features) and storage (quota, usage, persistence).
//! Works in a window and in a worker (both have `navigator.gpu` and `navigator.storage`).

use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;

use crate::store::js;

/// Everything the device report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrowserReport {
    /// WebGPU availability and, when present, the adapter.
    pub webgpu: WebGpu,
    /// Storage quota as the browser reports it, when the API exists.
    pub storage: Option<Storage>,
    /// `navigator.userAgent`, to name the browser in explanations.
    pub user_agent: String,
}

/// WebGPU as found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WebGpu {
    /// `navigator.gpu` does not exist: the browser has no WebGPU or it is switched off.
    Missing,
    /// `navigator.gpu` exists but no adapter was given (blocklisted GPU, disabled flag, no driver).
    NoAdapter(String),
    /// An adapter was found.
    Available(Adapter),
}

/// A WebGPU adapter and the limits it can grant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adapter {
    /// Vendor, architecture, device and description, as far as the browser discloses them.
    pub name: String,
    /// A software fallback adapter (SwiftShader and similar): works, but slowly.
    pub fallback: bool,
    /// `limits.maxBufferSize` in bytes.
    pub max_buffer_size: f64,
    /// `limits.maxStorageBufferBindingSize` in bytes.
    pub max_storage_buffer_binding_size: f64,
    /// Feature `shader-f16`.
    pub shader_f16: bool,
    /// Feature `subgroups`.
    pub subgroups: bool,
}

/// Origin storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Storage {
    /// Bytes the origin may use.
    pub quota: Option<f64>,
    /// Bytes in use.
    pub usage: Option<f64>,
    /// Whether storage is persistent (not evicted under pressure); `None` when unknown.
    pub persisted: Option<bool>,
}

/// Probes the current global scope.
pub async fn probe() -> BrowserReport {
    let navigator = js::get(&js_sys::global(), "navigator").unwrap_or(JsValue::UNDEFINED);
    BrowserReport {
        webgpu: probe_webgpu(&navigator).await,
        storage: probe_storage(&navigator).await,
        user_agent: js::get_string(&navigator, "userAgent"),
    }
}

async fn probe_webgpu(navigator: &JsValue) -> WebGpu {
    let Some(gpu) = js::get(navigator, "gpu") else { return WebGpu::Missing };
    let options = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&options, &"powerPreference".into(), &"high-performance".into());
    let adapter = match js::call_async(&gpu, "requestAdapter", &[options.into()]).await {
        Ok(adapter) if !adapter.is_null() && !adapter.is_undefined() => adapter,
        Ok(_) => return WebGpu::NoAdapter("the browser returned no adapter".into()),
        Err(e) => return WebGpu::NoAdapter(e),
    };
    let info = js::get(&adapter, "info").unwrap_or(JsValue::UNDEFINED);
    let name = ["vendor", "architecture", "device", "description"]
        .iter()
        .map(|k| js::get_string(&info, k))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" · ");
    let limits = js::get(&adapter, "limits").unwrap_or(JsValue::UNDEFINED);
    let features = js::get(&adapter, "features").unwrap_or(JsValue::UNDEFINED);
    let has = |feature: &str| {
        js_sys::Reflect::get(&features, &"has".into())
            .ok()
            .and_then(|f| wasm_bindgen::JsCast::dyn_into::<js_sys::Function>(f).ok())
            .and_then(|f| f.call1(&features, &feature.into()).ok())
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    let fallback = js::get(&info, "isFallbackAdapter")
        .or_else(|| js::get(&adapter, "isFallbackAdapter"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    WebGpu::Available(Adapter {
        name: if name.is_empty() { "unnamed adapter".into() } else { name },
        fallback,
        max_buffer_size: js::get_f64(&limits, "maxBufferSize").unwrap_or(0.0),
        max_storage_buffer_binding_size: js::get_f64(&limits, "maxStorageBufferBindingSize").unwrap_or(0.0),
        shader_f16: has("shader-f16"),
        subgroups: has("subgroups"),
    })
}

async fn probe_storage(navigator: &JsValue) -> Option<Storage> {
    let storage = js::get(navigator, "storage")?;
    let estimate = js::call_async(&storage, "estimate", &[]).await.ok();
    let persisted = js::call_async(&storage, "persisted", &[]).await.ok().and_then(|v| v.as_bool());
    Some(Storage {
        quota: estimate.as_ref().and_then(|e| js::get_f64(e, "quota")),
        usage: estimate.as_ref().and_then(|e| js::get_f64(e, "usage")),
        persisted,
    })
}
