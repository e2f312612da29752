//! Hand-written zbus proxies for the few parts of `org.freedesktop.systemd1` roost uses. Only
//! declarations: what to call and when belongs to the runtime. Build them with
//! `CacheProperties::No`: a cached property would hide the state roost must observe.

use zbus::proxy;
use zbus::{ObjectPath, OwnedObjectPath};

/// Bus name of the systemd manager.
pub const SERVICE: &str = "org.freedesktop.systemd1";
/// Object path of the manager.
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
/// Interface of the manager object.
pub const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
/// Interface every unit object has.
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
/// Interface of service unit objects: main process, restarts, result, exec settings.
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";
/// The object paths of all units start with this.
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

/// `org.freedesktop.systemd1.Manager`: loads, starts and stops units, enables unit files, and
/// reports the end of jobs (`JobRemoved`).
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
    /// Loads unit `name` if it is not loaded; returns its object path.
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a start job for unit `name` in job `mode` (e.g. `replace`); returns the job's path.
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a stop job for unit `name` in job `mode`; returns the job's path.
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Queues a restart job for unit `name` in job `mode`; returns the job's path.
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// Clears the failed state of unit `name`, and its start-limit counter.
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    /// Enables unit `files` (`runtime`: in /run only; `force`: replacing conflicting links);
    /// returns whether they carry install information, and the changes made.
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<UnitFileChange>)>;
    /// Disables unit `files` (`runtime`: in /run only); returns the changes made.
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<UnitFileChange>>;
    /// The loaded units in one of `states` whose names match one of `patterns`.
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<ListedUnit>>;

    /// The manager's version string.
    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    /// A job ended: its `id` and path, its `unit`, and its `result` (`done`, `failed`, `canceled`,
    /// `timeout`, `dependency`, `skipped`).
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

/// `org.freedesktop.systemd1.Unit` of one unit object: its states, its file and when it last
/// became active.
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
    /// `ActiveState`: `active`, `inactive`, `failed`, `activating`, ...
    #[zbus(property, name = "ActiveState")]
    fn active_state(&self) -> zbus::Result<String>;
    /// `SubState`: the unit type's finer state (`running`, `dead`, `auto-restart`, ...).
    #[zbus(property, name = "SubState")]
    fn sub_state(&self) -> zbus::Result<String>;
    /// `LoadState`: whether the manager could load the unit (`loaded`, `not-found`, `masked`, ...).
    #[zbus(property, name = "LoadState")]
    fn load_state(&self) -> zbus::Result<String>;
    /// `UnitFileState`: `enabled`, `enabled-runtime`, `disabled`, ...
    #[zbus(property, name = "UnitFileState")]
    fn unit_file_state(&self) -> zbus::Result<String>;
    /// `FragmentPath`: the unit file the manager loaded.
    #[zbus(property, name = "FragmentPath")]
    fn fragment_path(&self) -> zbus::Result<String>;
    /// Microseconds since the epoch.
    #[zbus(property, name = "ActiveEnterTimestamp")]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
}

/// `org.freedesktop.systemd1.Service` of a service unit object: its main process, restarts,
/// result, and the settings it runs with.
#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    assume_defaults = false
)]
pub trait Service {
    /// `MainPID`: the main process, 0 when there is none.
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    /// `NRestarts`: automatic restarts since the unit was last started or stopped on request.
    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    /// `Result`: how the last run ended (`success`, `exit-code`, `signal`, `start-limit-hit`, ...).
    #[zbus(property, name = "Result")]
    fn result(&self) -> zbus::Result<String>;
    /// `ExecStart`: the service's commands, each with the outcome of its last run.
    #[zbus(property, name = "ExecStart")]
    fn exec_start(&self) -> zbus::Result<Vec<ExecCommand>>;
    /// `Environment`: the `NAME=value` assignments of the unit.
    #[zbus(property, name = "Environment")]
    fn environment(&self) -> zbus::Result<Vec<String>>;
    /// `WorkingDirectory`: the folder the service starts in ("" when not set).
    #[zbus(property, name = "WorkingDirectory")]
    fn working_directory(&self) -> zbus::Result<String>;
    /// `Restart`: `always`, `on-failure`, `no`, ...
    #[zbus(property, name = "Restart")]
    fn restart(&self) -> zbus::Result<String>;
    /// `RestartUSec`: delay before an automatic restart, in microseconds.
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
