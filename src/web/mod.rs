//! Browser glue without UI: probing the browser, the inference worker and the page's handle on it.

pub mod client;
pub mod js;
pub mod locks;
pub mod probe;
pub mod worker;
