//! The page ↔ worker boundary: the messages both sides exchange ([`protocol`]) and the embed API's
//! `postMessage` contract ([`embed_api`]), the mask's pixels ([`mask_painting`]) and what the editor's stage shows
//! ([`stage`]), all plain data tested natively; and, in the browser, probing the
//! browser, the inference worker and the page's handle on it.

pub mod embed_api;
pub mod mask_painting;
pub mod protocol;
pub mod stage;

#[cfg(target_arch = "wasm32")]
pub mod canvas;
#[cfg(target_arch = "wasm32")]
pub mod client;
#[cfg(target_arch = "wasm32")]
pub mod locks;
#[cfg(target_arch = "wasm32")]
pub mod probe;
#[cfg(target_arch = "wasm32")]
pub mod worker;
