//! The state file: what the daemon needs to take over after a restart.
//! Written atomically (temporary file, fsync, rename), so a crash leaves
//! either the old or the new state, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use teal_core::release::Machine;

use crate::supervisor::{GroupRecord, RevisionSpec};

/// Bumped when the layout changes incompatibly.
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedState {
    pub machine: Machine,
    pub revisions: BTreeMap<String, RevisionSpec>,
    pub groups: Vec<GroupRecord>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    #[serde(flatten)]
    state: SavedState,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

pub fn save(path: &Path, state: &SavedState) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(&File {
        version: VERSION,
        state: state.clone(),
    })?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// `None` when there is no state file yet.
pub fn load(path: &Path) -> std::io::Result<Option<SavedState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: not a teal state file ({e}); move it away to start afresh",
                path.display()
            ),
        )
    })?;
    if file.version != VERSION {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{}: state file version {} is not supported (expected {VERSION})",
                path.display(),
                file.version
            ),
        ));
    }
    Ok(Some(file.state))
}
