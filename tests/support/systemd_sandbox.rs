//! A private `systemd --user` per test: its own cgroup in each hierarchy, its own mount
//! namespace with a tmpfs on /run/systemd (so the manager believes the system booted with
//! systemd without touching the host's), its own XDG folders and bus at `$DIR/xdg/bus`.
//! Needs root. Environment goes to children explicitly; this module never calls `set_var`.
//!
//! Teardown (Drop): SIGTERM the manager (it stops its units), wait for it, then remove the test's
//! cgroups deepest first. A test process killed outright takes its manager along (the manager
//! gets SIGTERM through `setpriv --pdeathsig`), and the next sandbox sweeps cgroups whose test
//! process is gone.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use roost::runtime::systemd::SystemdTarget;

pub const HIERARCHIES: &[&str] = &[
    "/sys/fs/cgroup/systemd",
    "/sys/fs/cgroup/unified",
    "/sys/fs/cgroup/pids",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/cpu",
];
const CGROUP_PREFIX: &str = "roost-test-";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Sandbox {
    dir: tempfile::TempDir,
    cgroup: String,
    manager: Option<Child>,
}

impl Sandbox {
    /// Spawns the manager and waits until it answers on its bus.
    pub async fn start() -> Self {
        sweep_leaked_cgroups();
        let dir = tempfile::Builder::new()
            .prefix("roost-sd-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let cgroup = format!(
            "{CGROUP_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut sandbox = Self {
            dir,
            cgroup,
            manager: None,
        };
        sandbox.spawn_manager();
        sandbox.wait_ready().await;
        sandbox
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir().join("xdg/bus").display())
    }

    pub fn unit_dir(&self) -> PathBuf {
        self.dir().join("xdg/systemd/user")
    }

    pub fn target(&self) -> SystemdTarget {
        SystemdTarget::Address {
            bus_address: self.bus_address(),
            unit_dir: self.unit_dir(),
        }
    }

    pub fn manager_pid(&self) -> u32 {
        self.manager.as_ref().expect("manager running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("systemd.log")).unwrap_or_default()
    }

    /// `systemctl --user ARGS` as an operator on this manager.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", self.dir().join("home"))
            .env("XDG_RUNTIME_DIR", self.dir().join("xdg"))
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus_address())
            .output()
            .expect("run systemctl")
    }

    /// Stops the manager (as a shutdown would: it stops every unit) and starts a new one on the
    /// same folders: unit files and enablement survive, as across a reboot.
    pub async fn restart_manager(&mut self) {
        self.stop_manager();
        self.spawn_manager();
        self.wait_ready().await;
    }

    /// Stops the manager and leaves it stopped.
    pub fn stop_manager(&mut self) {
        if let Some(child) = self.manager.take() {
            terminate(child, Duration::from_secs(10));
        }
        remove_cgroup_tree(&self.cgroup);
    }

    /// Starts a manager after [`Sandbox::stop_manager`].
    pub async fn start_manager(&mut self) {
        self.spawn_manager();
        self.wait_ready().await;
    }

    fn spawn_manager(&mut self) {
        let dir = self.dir().to_path_buf();
        for sub in ["xdg", "home", "config"] {
            std::fs::create_dir_all(dir.join(sub)).expect("sandbox folders");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("xdg"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod xdg");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("systemd.log"))
            .expect("log file");
        // Own cgroup first: started from the root cgroup, systemd --user would move every process
        // of the machine into its init.scope.
        let script = r#"set -e
for h in $HIERARCHIES; do
  [ -d "$h" ] || continue
  mkdir -p "$h/$CG"
  echo $$ > "$h/$CG/cgroup.procs"
done
exec setpriv --pdeathsig TERM unshare -m --propagation private sh -c \
  'mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/system && exec /lib/systemd/systemd --user'
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", dir.join("home"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_RUNTIME_DIR", dir.join("xdg"))
            .env("CG", &self.cgroup)
            .env("HIERARCHIES", HIERARCHIES.join(" "))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn systemd --user (needs root, unshare, setpriv)");
        self.manager = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self
                .manager
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "systemd --user exited early ({status}); log:\n{}",
                    self.log()
                );
            }
            if self.dir().join("xdg/bus").exists() {
                let probe = async {
                    let conn = zbus::connection::Builder::address(self.bus_address().as_str())
                        .build()
                        .await?;
                    roost::runtime::systemd::dbus::manager_proxy(&conn)
                        .await?
                        .version()
                        .await
                };
                match tokio::time::timeout(Duration::from_secs(2), probe).await {
                    Ok(Ok(_)) => return,
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = "timed out".into(),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "systemd --user did not answer on its bus: {last_error}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_manager();
    }
}

/// SIGTERM, wait up to `within` (PID 1 here reaps late, so wait on the child ourselves),
/// SIGKILL if it hangs.
pub fn terminate(mut child: Child, within: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills whatever is left in the test's cgroups and removes them, deepest first.
pub fn remove_cgroup_tree(cgroup: &str) {
    for hierarchy in HIERARCHIES {
        let root = Path::new(hierarchy).join(cgroup);
        if !root.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&root, &mut dirs);
        // Deepest first.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for _ in 0..50 {
            let mut busy = false;
            for dir in &dirs {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        busy = true;
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            for dir in &dirs {
                let _ = std::fs::remove_dir(dir);
            }
            if !busy && !root.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Cgroups left by a test process that no longer exists (killed outright).
fn sweep_leaked_cgroups() {
    for hierarchy in HIERARCHIES {
        let Ok(entries) = std::fs::read_dir(hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(CGROUP_PREFIX) else {
                continue;
            };
            let owner = rest.split('-').next().unwrap_or_default();
            if !owner.is_empty() && !Path::new("/proc").join(owner).exists() {
                remove_cgroup_tree(&name);
            }
        }
    }
}
