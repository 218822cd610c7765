//! Each model's MagCache ratios, measured in this browser by a calibrating edit (the Speed control's "Calibrate
//! MagCache") and kept in IndexedDB under the model's description, so that the MagCache level is there the next
//! time the same model is loaded.

use crate::pipeline::cache::MagRatios;
use crate::store::idb::Store;
use crate::{Error, Result};

/// The blob name of the ratios of the model described as `model`.
fn blob_name(model: &str) -> String {
    format!("mag-ratios:{model}")
}

/// The stored ratios of the model described as `model`, if it was calibrated here.
pub async fn load(model: &str) -> Result<Option<MagRatios>> {
    match Store::open().await?.get_blob(&blob_name(model)).await? {
        Some(bytes) => {
            let text =
                String::from_utf8(bytes).map_err(|_| Error::Invalid("stored MagCache ratios are damaged".into()))?;
            MagRatios::parse(&text).map(Some)
        }
        None => Ok(None),
    }
}

/// Keeps `ratios` for their model, replacing earlier ones.
pub async fn store(ratios: &MagRatios) -> Result<()> {
    let json = serde_json::to_vec(ratios).map_err(|e| Error::Invalid(e.to_string()))?;
    Store::open().await?.put_blob(&blob_name(&ratios.model), &json).await
}
