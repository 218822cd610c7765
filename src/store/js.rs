//! Small helpers over `js_sys::Reflect`, so browser APIs that web-sys keeps behind unstable flags (WebGPU)
//! or that differ between window and worker scopes can be reached the same way everywhere.

use js_sys::{Array, Function, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

/// A message for `postMessage`: plain JSON-shaped objects, with byte payloads as `Uint8Array`s (structured
/// clone copies those in one block; a JS array of numbers would cost one object per byte on each side).
pub fn to_message(value: &impl serde::Serialize) -> Result<JsValue, String> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible().serialize_bytes_as_arrays(false);
    value.serialize(&serializer).map_err(|e| e.to_string())
}

/// `obj[key]`, or `None` when missing, `undefined` or `null`.
pub fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(obj, &JsValue::from_str(key)).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `obj[key]` as a number.
pub fn get_f64(obj: &JsValue, key: &str) -> Option<f64> {
    get(obj, key).and_then(|v| v.as_f64())
}

/// `obj[key]` as a string (empty when missing).
pub fn get_string(obj: &JsValue, key: &str) -> String {
    get(obj, key).and_then(|v| v.as_string()).unwrap_or_default()
}

/// Calls `obj.method(...args)` and awaits the promise it returns.
pub async fn call_async(obj: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, String> {
    let function: Function = get(obj, method)
        .ok_or_else(|| format!("{method} is not available"))?
        .dyn_into()
        .map_err(|_| format!("{method} is not a function"))?;
    let promise = function.apply(obj, &args.iter().collect::<Array>()).map_err(describe)?;
    JsFuture::from(Promise::resolve(&promise)).await.map_err(describe)
}

/// A readable one-line description of a thrown JS value.
pub fn describe(error: JsValue) -> String {
    if let Some(message) = get(&error, "message").and_then(|m| m.as_string()) {
        return message;
    }
    error.as_string().unwrap_or_else(|| format!("{error:?}"))
}

/// Calls `callback` each time the page becomes visible again (the user comes back to the tab).
pub fn on_visible(callback: impl Fn() + 'static) {
    let Some(document) = web_sys::window().and_then(|w| w.document()) else { return };
    let listener = wasm_bindgen::closure::Closure::<dyn Fn()>::new(move || {
        let visible = web_sys::window()
            .and_then(|w| w.document())
            .is_some_and(|d| get_string(&d, "visibilityState") == "visible");
        if visible {
            callback();
        }
    });
    let _ = document.add_event_listener_with_callback("visibilitychange", listener.as_ref().unchecked_ref());
    listener.forget();
}

/// Bytes of this module's WebAssembly memory: it only grows, so this is the most the heap has needed so far.
pub fn wasm_heap_bytes() -> u64 {
    get_f64(&get(&wasm_bindgen::memory(), "buffer").unwrap_or(JsValue::UNDEFINED), "byteLength").unwrap_or(0.0) as u64
}
