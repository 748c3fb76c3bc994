//! Which tape is in which drive. Without a changer, whatever the operator loaded (a tape
//! Ferry has not seen is labelled once it reads back blank). With a changer (`mtx`), the
//! backend loads tapes from its slots: for a write, the tape in the drive if it has room,
//! else the next known tape with room (slot order), else the next blank one; for a read,
//! the tape needed. The label store records each tape's home slot.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::backend::TarBackend;
use super::changer::{Changer, MtxStatus};
use super::drive::Drive;
use super::labels::LabelStore;
use crate::tape::{CommandRun, RunRef, TapeError};

/// The label store of an operation in progress, shared by its drive threads, and the
/// tapes its copies use (one copy never writes onto another copy's tape).
#[derive(Debug)]
pub(super) struct Library {
    pub store: LabelStore,
    pub claimed: BTreeSet<String>,
}

/// A tape in a slot, chosen to be loaded.
struct Pick {
    slot: u32,
    /// Its label, if Ferry knows the tape.
    label: Option<String>,
    /// Its barcode.
    tag: Option<String>,
}

impl TarBackend {
    /// Drive `i` holds a tape with room for a write session (loading one with a
    /// changer); its label.
    pub(super) fn mount_for_write(
        &self,
        lib: &Mutex<Library>,
        i: usize,
        run: &RunRef,
    ) -> Result<String, TapeError> {
        let dev = self.cfg.devices[i].clone();
        let mut lib = self.lib(lib)?;
        let Some(changer) = &self.changer else {
            let label = match lib.store.label_in(&dev) {
                Some(l) => l.to_owned(),
                None => {
                    let l = self.new_label(i);
                    self.adopt_blank(&mut lib.store, i, l)?
                }
            };
            lib.claimed.insert(label.clone());
            return Ok(label);
        };
        let status = changer.status()?;
        self.reconcile(changer, &mut lib.store, &status);
        let d = changer.drive_no(i);
        match status.drives.get(&d) {
            None => {
                return Err(self.changer_err(
                    changer,
                    i,
                    format!("the changer reports no drive {d}"),
                ))
            }
            Some(Some(loaded)) => match lib.store.label_in(&dev).map(str::to_owned) {
                Some(l) if !lib.store.tapes.get(&l).is_some_and(|t| t.full) => {
                    lib.claimed.insert(l.clone());
                    return Ok(l);
                }
                // Full: change it below.
                Some(_) => {}
                None => {
                    let label = self.fresh_label(&lib.store, i, loaded.tag.as_deref());
                    let label = self.adopt_blank(&mut lib.store, i, label)?;
                    if let Some(s) = loaded.from_slot {
                        lib.store.slots.insert(s, label.clone());
                    }
                    lib.claimed.insert(label.clone());
                    return Ok(label);
                }
            },
            Some(None) => {}
        }
        let why = format!("put of run {}", run.name);
        self.change_tape(&mut lib, changer, &status, i, &why)?
            .ok_or_else(|| {
                self.changer_err(
                    changer,
                    i,
                    format!(
                        "no tape with room in slots {:?} for run {}",
                        changer.cfg.slots, run.name
                    ),
                )
            })
    }

    /// The tape `label` in drive `i` filled up (`full` says how): mark it full and load
    /// the next tape with room. `full` is returned when there is none.
    pub(super) fn swap_full(
        &self,
        lib: &Mutex<Library>,
        i: usize,
        label: &str,
        run: &RunRef,
        full: TapeError,
    ) -> Result<String, TapeError> {
        let Some(changer) = &self.changer else {
            return Err(full);
        };
        let mut lib = self.lib(lib)?;
        if let Some(t) = lib.store.tapes.get_mut(label) {
            t.full = true;
        }
        let status = changer.status()?;
        self.reconcile(changer, &mut lib.store, &status);
        let why = format!("run {}: tape {label} is full", run.name);
        let next = self.change_tape(&mut lib, changer, &status, i, &why)?;
        lib.store.save(&self.cfg.name, &self.cfg.labels)?;
        next.ok_or(full)
    }

    /// The drive holding tape `label`, loading it into drive `prefer` (with a changer)
    /// when no drive holds it.
    pub(super) fn mount_for_read(
        &self,
        lib: &Mutex<Library>,
        prefer: usize,
        label: &str,
        why: &str,
    ) -> Result<Drive, TapeError> {
        let mut lib = self.lib(lib)?;
        let Some(changer) = &self.changer else {
            return self.drive_for(&lib.store, label);
        };
        let status = changer.status()?;
        self.reconcile(changer, &mut lib.store, &status);
        if let Some(dev) = lib.store.device_of(label) {
            return Ok(Drive::new(&self.cfg, PathBuf::from(dev)));
        }
        let slot = lib
            .store
            .home_slot(label)
            .or_else(|| {
                status
                    .slots
                    .iter()
                    .find(|(_, t)| t.as_ref().is_some_and(|t| t.as_deref() == Some(label)))
                    .map(|(s, _)| *s)
            })
            .filter(|s| matches!(status.slots.get(s), Some(Some(_))))
            .ok_or_else(|| {
                self.changer_err(
                    changer,
                    prefer,
                    format!("tape {label} is in no drive and no slot of the changer ({why})"),
                )
            })?;
        let why = format!("{why}: tape {label}");
        self.unload_drive(&mut lib, changer, &status, prefer, &why)?;
        let dev = self.cfg.devices[prefer].clone();
        changer.load(slot, changer.drive_no(prefer), &dev, &why)?;
        self.mounted(&mut lib.store, prefer, label);
        lib.store.slots.insert(slot, label.to_owned());
        Ok(Drive::new(&self.cfg, dev))
    }

    /// Put away what drive `i` holds, load the next tape with room; its label, or `None`
    /// when no slot offers one.
    fn change_tape(
        &self,
        lib: &mut MutexGuard<'_, Library>,
        changer: &Changer,
        status: &MtxStatus,
        i: usize,
        why: &str,
    ) -> Result<Option<String>, TapeError> {
        let Some(pick) = self.pick_tape(changer, &lib.store, status, &lib.claimed) else {
            return Ok(None);
        };
        self.unload_drive(lib, changer, status, i, why)?;
        let dev = self.cfg.devices[i].clone();
        changer.load(pick.slot, changer.drive_no(i), &dev, why)?;
        let label = match pick.label {
            Some(l) => {
                self.mounted(&mut lib.store, i, &l);
                l
            }
            None => {
                let l = self.fresh_label(&lib.store, i, pick.tag.as_deref());
                self.adopt_blank(&mut lib.store, i, l)?
            }
        };
        lib.store.slots.insert(pick.slot, label.clone());
        lib.claimed.insert(label.clone());
        Ok(Some(label))
    }

    /// Unload drive `i` (if it holds a tape) into the tape's home slot.
    fn unload_drive(
        &self,
        lib: &mut MutexGuard<'_, Library>,
        changer: &Changer,
        status: &MtxStatus,
        i: usize,
        why: &str,
    ) -> Result<(), TapeError> {
        let d = changer.drive_no(i);
        let Some(Some(loaded)) = status.drives.get(&d) else {
            return Ok(());
        };
        let dev = self.cfg.devices[i].clone();
        let current = lib.store.label_in(&dev).map(str::to_owned);
        let slot = current
            .as_deref()
            .and_then(|l| lib.store.home_slot(l))
            .or(loaded.from_slot)
            .or_else(|| {
                changer
                    .cfg
                    .slots
                    .iter()
                    .copied()
                    .find(|s| matches!(status.slots.get(s), Some(None)))
            })
            .ok_or_else(|| {
                self.changer_err(
                    changer,
                    i,
                    format!("no empty slot to unload drive {d} into ({why})"),
                )
            })?;
        changer.unload(slot, d, &dev, why)?;
        lib.store.devices.remove(&dev.display().to_string());
        if let Some(l) = current {
            lib.store.slots.insert(slot, l);
        }
        Ok(())
    }

    /// Known tapes with room first, then blank ones, each in the configured slot order.
    fn pick_tape(
        &self,
        changer: &Changer,
        store: &LabelStore,
        status: &MtxStatus,
        claimed: &BTreeSet<String>,
    ) -> Option<Pick> {
        let occupied: Vec<(u32, Option<String>)> = changer
            .cfg
            .slots
            .iter()
            .filter_map(|s| match status.slots.get(s) {
                Some(Some(tag)) => Some((*s, tag.clone())),
                _ => None,
            })
            .collect();
        let known = |s: u32, tag: &Option<String>| {
            store
                .slots
                .get(&s)
                .cloned()
                .or_else(|| tag.clone().filter(|t| store.tapes.contains_key(t)))
        };
        for (slot, tag) in &occupied {
            if let Some(l) = known(*slot, tag) {
                if !claimed.contains(&l) && store.tapes.get(&l).is_some_and(|t| !t.full) {
                    return Some(Pick {
                        slot: *slot,
                        label: Some(l),
                        tag: tag.clone(),
                    });
                }
            }
        }
        occupied
            .into_iter()
            .find(|(s, tag)| known(*s, tag).is_none())
            .map(|(slot, tag)| Pick {
                slot,
                label: None,
                tag,
            })
    }

    /// Bring the store's drive map in line with what the changer reports.
    fn reconcile(&self, changer: &Changer, store: &mut LabelStore, status: &MtxStatus) {
        for (i, dev) in self.cfg.devices.iter().enumerate() {
            let key = dev.display().to_string();
            match status.drives.get(&changer.drive_no(i)) {
                Some(None) => {
                    store.devices.remove(&key);
                }
                Some(Some(loaded)) => {
                    let label = loaded
                        .from_slot
                        .and_then(|s| store.slots.get(&s).cloned())
                        .or_else(|| loaded.tag.clone().filter(|t| store.tapes.contains_key(t)));
                    match label {
                        Some(l) => self.mounted(store, i, &l),
                        None => {
                            // A tape Ferry put in a slot is not what this drive holds.
                            let managed = store
                                .label_in(dev)
                                .is_some_and(|l| store.home_slot(l).is_some());
                            if managed {
                                store.devices.remove(&key);
                            }
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// Record tape `label` as loaded in drive `i` (and in no other).
    fn mounted(&self, store: &mut LabelStore, i: usize, label: &str) {
        let key = self.cfg.devices[i].display().to_string();
        store.devices.retain(|k, l| *k == key || l != label);
        store.devices.insert(key, label.to_owned());
    }

    /// The barcode as label when it is new, else a made-up label.
    fn fresh_label(&self, store: &LabelStore, i: usize, tag: Option<&str>) -> String {
        match tag {
            Some(t) if !store.tapes.contains_key(t) => t.to_owned(),
            _ => self.new_label(i),
        }
    }

    fn changer_err(&self, changer: &Changer, i: usize, what: String) -> TapeError {
        TapeError::Drive {
            backend: self.cfg.name.clone(),
            device: self.cfg.devices[i].clone(),
            what,
            command: Box::new(CommandRun {
                argv: changer.cfg.status.clone(),
                status: None,
                stderr_tail: String::new(),
            }),
        }
    }
}
