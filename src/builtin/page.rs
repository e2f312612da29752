//! The field page as a built-in component: `roost serve --listen ADDR --state-dir DIR` of this
//! binary when `spec.page` is set. It reads status.json, the recorder's settings and the
//! recordings; it writes nothing but its spectrogram cache, and nothing it serves can change the
//! device. Its health is its process: it has no output of its own to judge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use super::{Builtin, BuiltinError};
use crate::observe::{BuiltinHealth, BuiltinReport, ComponentRun};
use crate::spec::Deployment;

/// The component name of the page.
pub const PAGE_COMPONENT: &str = "page";

/// The page built-in of a roost running `exe` with its state in `state_dir`.
pub struct Page {
    exe: PathBuf,
    state_dir: PathBuf,
}

impl Page {
    /// The page served by `<exe> serve`, reading `state_dir`.
    pub fn new(exe: &Path, state_dir: &Path) -> Self {
        Self {
            exe: exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }
}

impl Builtin for Page {
    fn name(&self) -> &'static str {
        PAGE_COMPONENT
    }

    fn run(&self, d: &Deployment) -> Option<ComponentRun> {
        let page = d.spec.page.as_ref()?;
        let mut argv = vec![
            self.exe.display().to_string(),
            "serve".to_string(),
            "--listen".to_string(),
            page.listen.addr().to_string(),
            "--state-dir".to_string(),
            self.state_dir.display().to_string(),
        ];
        if let Some(file) = &page.password_file {
            argv.extend([
                "--password-file".to_string(),
                file.as_path().display().to_string(),
            ]);
        }
        let hash_input = argv.join("\n");
        Some(super::own_run(
            PAGE_COMPONENT,
            d,
            argv,
            &hash_input,
            crate::spec::RestartPolicy::Always,
            Duration::from_secs(2),
            // Reads everything it shows; writes only its spectrogram cache (run folder).
            crate::sandbox::Confinement::builtin(
                &self.state_dir,
                &[&crate::fsutil::run_dir(&self.state_dir)],
                true,
                false,
                true,
            ),
        ))
    }

    fn prepare(&self, _d: &Deployment) -> Result<(), BuiltinError> {
        Ok(())
    }

    fn health(&self, _pid: Option<u32>, _now: Timestamp) -> BuiltinHealth {
        BuiltinHealth::Reported(BuiltinReport {
            output: serde_json::Value::Null,
            trouble: None,
            produced: true,
            look_again_at: None,
        })
    }
}
