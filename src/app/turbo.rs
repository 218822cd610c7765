//! The Turbo presets: a turbo LoRA of the catalog ([`TURBO_LORAS`]) enabled at its model card's strength, with
//! the card's steps and guidance. A LoRA not yet in this browser is offered for fetching first: the whole file
//! from its URL with measured progress, checked against the catalog's size and SHA-256, then kept with the other
//! adapters (IndexedDB) and handed to the worker.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::AppState;
use super::edit::EditForm;
use super::loras::{self, LoraEntry, LoraStatus};
use crate::store::catalog::{TURBO_LORAS, TurboLora};
use crate::store::download::{self, CancelFlag};

/// Output area of the Turbo presets (the cards' examples are 1024×1024).
const TURBO_SIDE: usize = 1024;

/// The Turbo presets' state.
#[derive(Debug, Clone, Copy)]
pub struct TurboForm {
    /// The preset waiting for its LoRA to be fetched: the offer shown under the presets.
    pub offer: RwSignal<Option<&'static TurboLora>>,
    /// Bytes fetched so far while a fetch runs.
    pub fetched: RwSignal<Option<u64>>,
    /// Why the last fetch failed.
    pub error: RwSignal<Option<String>>,
    cancel: StoredValue<Option<CancelFlag>, LocalStorage>,
}

impl TurboForm {
    /// Nothing offered or fetched.
    pub fn new() -> Self {
        Self {
            offer: RwSignal::new(None),
            fetched: RwSignal::new(None),
            error: RwSignal::new(None),
            cancel: StoredValue::new_local(None),
        }
    }

    /// Applies the preset of `lora` when its file is listed; otherwise offers to fetch it.
    pub fn choose(self, state: AppState, form: EditForm, lora: &'static TurboLora) {
        self.error.set(None);
        match stored(state, lora) {
            Some(name) => {
                enable(state, &name, lora, self.error);
                form.steps.set(lora.steps);
                form.guidance.set(lora.guidance);
                form.area_side.set(TURBO_SIDE);
                self.offer.set(None);
            }
            None => self.offer.set(Some(lora)),
        }
    }

    /// Fetches the offered LoRA, keeps it, and applies its preset.
    pub fn fetch(self, state: AppState, form: EditForm) {
        let Some(lora) = self.offer.get_untracked() else { return };
        let cancel = CancelFlag::new();
        self.cancel.set_value(Some(cancel.clone()));
        self.error.set(None);
        self.fetched.set(Some(0));
        spawn_local(async move {
            let fetched = self.fetched;
            let outcome = async {
                let Some(bytes) = download::fetch_all(lora.url, lora.size, &cancel, &mut |done| {
                    fetched.set(Some(done));
                })
                .await?
                else {
                    return Ok(false);
                };
                lora.verify(&bytes)?;
                loras::store_and_add(state, lora.name.to_string(), bytes).await?;
                Ok::<_, crate::Error>(true)
            }
            .await;
            self.fetched.set(None);
            self.cancel.set_value(None);
            match outcome {
                Ok(true) => self.choose(state, form, lora),
                Ok(false) => {}
                Err(e) => self.error.set(Some(format!("{} could not be fetched: {e}", lora.name))),
            }
        });
    }

    /// Stops a running fetch (nothing is kept).
    pub fn cancel(self) {
        if let Some(cancel) = self.cancel.get_value() {
            cancel.cancel();
        }
    }

    /// Closes the offer.
    pub fn dismiss(self) {
        self.cancel();
        self.offer.set(None);
        self.error.set(None);
    }
}

impl Default for TurboForm {
    fn default() -> Self {
        Self::new()
    }
}

/// The listed, usable adapter that is `lora` (by its stored name or its exact size), if any (tracked).
fn stored(state: AppState, lora: &TurboLora) -> Option<String> {
    state.loras.with(|all| all.iter().find(|e| usable(lora, e)).map(|e| e.name.clone()))
}

/// Whether `entry` is `lora` (by its stored name or its exact size) and was not refused by the model.
fn usable(lora: &TurboLora, entry: &LoraEntry) -> bool {
    lora.is(&entry.name, entry.size as u64) && !matches!(entry.status, LoraStatus::Rejected(_))
}

/// Whether `entry` is one of the catalog's turbo LoRAs.
fn is_turbo(entry: &LoraEntry) -> bool {
    TURBO_LORAS.iter().any(|lora| lora.is(&entry.name, entry.size as u64))
}

/// Enables `name` at `lora`'s strength and the other turbo LoRAs off (one distillation at a time); saved.
fn enable(state: AppState, name: &str, lora: &TurboLora, error: RwSignal<Option<String>>) {
    state.loras.update(|all| {
        for entry in all.iter_mut().filter(|e| is_turbo(e)) {
            entry.enabled = entry.name == name;
            if entry.enabled {
                entry.strength = lora.strength;
            }
        }
    });
    loras::persist(state, error);
}

/// Turns every turbo LoRA off (a preset without one was chosen); saved when one was on.
pub fn disable_all(state: AppState, error: RwSignal<Option<String>>) {
    if state.loras.with_untracked(|all| all.iter().any(|e| e.enabled && is_turbo(e))) {
        state.loras.update(|all| all.iter_mut().filter(|e| is_turbo(e)).for_each(|e| e.enabled = false));
        loras::persist(state, error);
    }
}

/// The Turbo preset in effect: its LoRA enabled at its strength, with its steps, guidance and area (tracked).
pub fn active(state: AppState, form: EditForm) -> Option<&'static TurboLora> {
    TURBO_LORAS.iter().find(|lora| {
        form.steps.get() == lora.steps
            && form.guidance.get() == lora.guidance
            && form.area_side.get() == TURBO_SIDE
            && state.loras.with(|all| all.iter().any(|e| e.enabled && e.strength == lora.strength && usable(lora, e)))
    })
}
