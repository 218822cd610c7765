//! Web Locks (`navigator.locks`): work that must run in one tab at a time, such as filling the same model in
//! the store, takes a named lock that other tabs of the site see.

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::{Error, Result};

/// A granted lock; dropping it releases it.
pub struct HeldLock {
    release: Function,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = self.release.call0(&JsValue::NULL);
    }
}

/// Takes the exclusive lock `name`. When another tab (or worker) holds it, calls `on_wait` and waits until it is
/// released.
pub async fn acquire(name: &str, on_wait: impl FnOnce()) -> Result<HeldLock> {
    if let Some(lock) = request(name, true).await? {
        return Ok(lock);
    }
    on_wait();
    request(name, false).await?.ok_or_else(|| Error::Invalid(format!("the browser did not grant the lock {name:?}")))
}

/// Takes the lock that lets one tab at a time fill or verify model `id` in the store (see [`acquire`]).
pub async fn model(id: &str, on_wait: impl FnOnce()) -> Result<HeldLock> {
    acquire(&format!("kontext-web model {id}"), on_wait).await
}

/// `navigator.locks.request(name, { ifAvailable }, callback)`: `None` when `if_available` and the lock is taken.
/// The callback's promise, which holds the lock, resolves when the returned [`HeldLock`] is dropped.
async fn request(name: &str, if_available: bool) -> Result<Option<HeldLock>> {
    let fail =
        |what: &str, e: JsValue| Error::Invalid(format!("browser locks: {what}: {}", crate::store::js::describe(e)));
    let locks = Reflect::get(&js_sys::global(), &"navigator".into())
        .and_then(|navigator| Reflect::get(&navigator, &"locks".into()))
        .ok()
        .filter(|locks| locks.is_object())
        .ok_or_else(|| {
            Error::Invalid("this browser has no Web Locks (navigator.locks); use a current browser".into())
        })?;
    let mut release = None;
    let held = Promise::new(&mut |resolve, _| release = Some(resolve));
    let release = release.expect("a Promise runs its executor at once");
    let mut callback = None;
    let granted = Promise::new(&mut |resolve, _| {
        let held = held.clone();
        callback = Some(Closure::once_into_js(move |lock: JsValue| {
            let _ = resolve.call1(&JsValue::NULL, &lock);
            held
        }));
    });
    let options = Object::new();
    Reflect::set(&options, &"ifAvailable".into(), &if_available.into()).map_err(|e| fail("options", e))?;
    let request: Function = Reflect::get(&locks, &"request".into()).map_err(|e| fail("request", e))?.unchecked_into();
    let settled = request
        .call3(&locks, &name.into(), &options, &callback.expect("a Promise runs its executor at once"))
        .map_err(|e| fail("request", e))?;
    if let Ok(settled) = settled.dyn_into::<Promise>() {
        let ignore = Closure::once(|_: JsValue| {});
        let _ = settled.catch(&ignore);
        ignore.forget();
    }
    let lock = JsFuture::from(granted).await.map_err(|e| fail("waiting for the lock", e))?;
    if lock.is_null() {
        let _ = release.call0(&JsValue::NULL);
        return Ok(None);
    }
    Ok(Some(HeldLock { release }))
}
