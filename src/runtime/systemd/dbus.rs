//! Hand-written zbus proxies for the few parts of `org.freedesktop.systemd1` roost uses. Only
//! declarations: what to call and when belongs to the runtime. Build them with
//! `CacheProperties::No`: a cached property would hide the state roost must observe.

use zbus::proxy;
use zbus::{ObjectPath, OwnedObjectPath};

pub const SERVICE: &str = "org.freedesktop.systemd1";
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
pub const UNIT_PATH_NAMESPACE: &str = "/org/freedesktop/systemd1/unit";

/// One element of `ListUnitsByPatterns`.
pub type ListedUnit = (
    String,          // name
    String,          // description
    String,          // load state
    String,          // active state
    String,          // sub state
    String,          // followed unit
    OwnedObjectPath, // unit path
    u32,             // job id
    String,          // job type
    OwnedObjectPath, // job path
);

/// One command of `ExecStart`: path, argv, ignore-failure, start/exit timestamps, pid, code,
/// status.
pub type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

/// `(type, file name, destination)` of each change `EnableUnitFiles`/`DisableUnitFiles` made.
pub type UnitFileChange = (String, String, String);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
pub trait Manager {
    /// Without a subscription the manager sends no `PropertiesChanged` for units.
    fn subscribe(&self) -> zbus::Result<()>;
    /// Replies when the reload is done.
    fn reload(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<ListedUnit>>;

    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    assume_defaults = false
)]
pub trait Unit {
    /// Pins the unit in the manager's memory while this connection lives: an inactive unit
    /// nothing else references would otherwise be unloaded and forget how it ended.
    #[zbus(name = "Ref")]
    fn ref_unit(&self) -> zbus::Result<()>;
    #[zbus(property, name = "ActiveState")]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "SubState")]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "LoadState")]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "UnitFileState")]
    fn unit_file_state(&self) -> zbus::Result<String>;
    #[zbus(property, name = "FragmentPath")]
    fn fragment_path(&self) -> zbus::Result<String>;
    /// Microseconds since the epoch.
    #[zbus(property, name = "ActiveEnterTimestamp")]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    assume_defaults = false
)]
pub trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property, name = "Result")]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property, name = "ExecStart")]
    fn exec_start(&self) -> zbus::Result<Vec<ExecCommand>>;
    #[zbus(property, name = "Environment")]
    fn environment(&self) -> zbus::Result<Vec<String>>;
    #[zbus(property, name = "WorkingDirectory")]
    fn working_directory(&self) -> zbus::Result<String>;
    #[zbus(property, name = "Restart")]
    fn restart(&self) -> zbus::Result<String>;
    #[zbus(property, name = "RestartUSec")]
    fn restart_usec(&self) -> zbus::Result<u64>;
}

/// Builds a proxy for the unit object at `path` with property caching off.
pub async fn unit_proxy<'a>(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
) -> zbus::Result<UnitProxy<'a>> {
    UnitProxy::builder(conn)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// Builds a proxy for the service interface of the unit object at `path`, caching off.
pub async fn service_proxy<'a>(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
) -> zbus::Result<ServiceProxy<'a>> {
    ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}

/// The manager proxy, caching off.
pub async fn manager_proxy<'a>(conn: &zbus::Connection) -> zbus::Result<ManagerProxy<'a>> {
    ManagerProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
}
