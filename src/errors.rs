//! The catalogue of error codes roost reports, each with a title, a description and a
//! recommended action, in the style of device deployment error codes. `roost explain CODE`
//! prints an entry; the status file carries the code and the action.

use serde::Serialize;

/// A problem a component reports: a catalogue code and what happened, in words (the recorder's
/// `error` and `warnings`, the curator's and the connector's alike).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Problem {
    /// A catalogue code (`DEP_E3xx`).
    pub code: String,
    /// What happened and what follows.
    pub message: String,
}

impl Problem {
    /// A problem with catalogue `code`.
    pub fn new(code: impl std::borrow::Borrow<ErrorCode>, message: impl Into<String>) -> Self {
        Self {
            code: code.borrow().code.to_string(),
            message: message.into(),
        }
    }
}

/// Why a component is in its status, as `reason` in status.json (the strings are a contract:
/// each variant is written as its name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Reason {
    /// Started and not yet reporting (a built-in), or about to be started.
    Starting,
    /// The energy policy (`spec.power.saving`) stopped it until power is back (DEP_E906).
    PowerSaving,
    /// Its spec changed; it is being replaced.
    SpecChanged,
    /// Someone stopped it outside roost; it stays stopped until its spec changes.
    StoppedByOperator,
    /// Roost could not stop it.
    StopFailed,
    /// `state: stopped`.
    DeploymentStopped,
    /// It exited 0 and its policy does not restart it.
    Completed,
    /// It exited with an error and restartPolicy Never keeps it stopped.
    Failed,
    /// Something it depends on is in error.
    DependencyFailed,
    /// Something it depends on is not running yet.
    WaitingForDependency,
    /// It keeps exiting soon after starting; restarted with back-off.
    CrashLoopBackOff,
    /// It exited; restarted when its back-off expires.
    BackOff,
    /// Its program is missing or not executable (DEP_E161).
    ExecutableNotFound,
    /// No file descriptor was left to start it (DEP_E164).
    OutOfDescriptors,
    /// The runtime refused a value of its spec (DEP_E162).
    InvalidSpec,
    /// The runtime could not be reached to start it (DEP_E151).
    RuntimeUnreachable,
    /// Its start failed for another reason.
    StartFailed,
    /// The recorder runs and produces no files (DEP_E313).
    NoRecordings,
    /// The recorder's storage cannot be written (DEP_E301).
    StorageUnusable,
    /// Below the storage's free-space floor (DEP_E302).
    LowDiskSpace,
    /// The storage is full (DEP_E303).
    DiskFull,
    /// The audio device cannot be opened (DEP_E311).
    AudioDeviceUnavailable,
    /// The audio device does not offer the asked format (DEP_E312).
    AudioFormatUnsupported,
    /// Samples were dropped (DEP_E314).
    SamplesDropped,
    /// The input runs far faster than real time (DEP_E315).
    InputNotRealTime,
    /// metadata.db cannot take the recorder's rows (DEP_E321).
    MetadataDbError,
    /// Another recorder fault.
    RecorderError,
    /// A detector has more recordings waiting than its maxBacklog (DEP_E611).
    DetectorBehind,
    /// A detector finished nothing for long while recordings wait (DEP_E612).
    DetectorStalled,
    /// A detector failed on its last recordings in a row (DEP_E601–E605, DEP_E610).
    DetectorFailing,
    /// Another curator fault (storage, metadata.db).
    CuratorError,
    /// Roost stopped and stopped it.
    ReconcilerStopped,
    /// A reason this version of roost does not know (a status written by a newer one).
    #[serde(other)]
    Unknown,
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ErrorCode {
    /// `DEP_E` and three digits: 1xx deployment and runtime, 3xx recorder and storage, 4xx roost
    /// itself, 5xx connect, 6xx detectors, 7xx the page, 8xx desired state from afar, 9xx power and heat.
    pub code: &'static str,
    /// A short title.
    pub title: &'static str,
    /// What the code means.
    pub description: &'static str,
    /// What to do about it.
    pub action: &'static str,
}

impl ErrorCode {
    /// The `reason` a component in error with this code gets in status.json; `None` for codes
    /// that are not a component's own trouble (the caller's general reason applies).
    pub fn reason(&self) -> Option<Reason> {
        Some(match self.code {
            "DEP_E151" => Reason::RuntimeUnreachable,
            "DEP_E161" => Reason::ExecutableNotFound,
            "DEP_E162" => Reason::InvalidSpec,
            "DEP_E164" => Reason::OutOfDescriptors,
            "DEP_E301" => Reason::StorageUnusable,
            "DEP_E302" => Reason::LowDiskSpace,
            "DEP_E303" => Reason::DiskFull,
            "DEP_E311" => Reason::AudioDeviceUnavailable,
            "DEP_E312" => Reason::AudioFormatUnsupported,
            "DEP_E313" => Reason::NoRecordings,
            "DEP_E314" => Reason::SamplesDropped,
            "DEP_E315" => Reason::InputNotRealTime,
            "DEP_E321" => Reason::MetadataDbError,
            "DEP_E906" => Reason::PowerSaving,
            "DEP_E611" => Reason::DetectorBehind,
            "DEP_E612" => Reason::DetectorStalled,
            "DEP_E601" | "DEP_E602" | "DEP_E603" | "DEP_E604" | "DEP_E605" | "DEP_E610" => {
                Reason::DetectorFailing
            }
            _ => return None,
        })
    }
}

macro_rules! codes {
    ($($ident:ident = $code:literal, $title:literal, $desc:literal, $action:literal;)*) => {
        $(#[doc = concat!("`", $code, "`: ", $title, ".")] pub const $ident: ErrorCode = ErrorCode { code: $code, title: $title, description: $desc, action: $action };)*
        /// Every code roost can report, in code order.
        pub const CATALOGUE: &[ErrorCode] = &[$($ident),*];
    };
}

codes! {
    RUNTIME_UNREACHABLE = "DEP_E151", "Runtime or device not reachable",
        "On a device: roost cannot talk to the runtime that runs the components (the systemd manager over D-Bus, or the process supervisor). In `roost fleet`: a device is offline or not reachable (its last will said offline, or its heartbeat is older than two intervals).",
        "On a device: check that systemd is running and its D-Bus socket is reachable (`systemctl is-system-running`); roost retries with back-off and recovers by itself when the runtime returns. For a device in the fleet view: check its power (battery, solar), its network link (cellular signal, Wi-Fi) and that `roost run` is running (`roost status` on the device); its messages wait in its outbox and arrive once it is back.";
    COMPONENT_FAILED = "DEP_E152", "Component exited too early or failed",
        "A component exited with a non-zero status or was killed by a signal.",
        "Read the component's log with `roost logs NAME`, fix the command or its environment; the restart policy decides whether roost restarts it.";
    DEPENDENCY_FAILED = "DEP_E156", "A dependency is in error",
        "A component is held back because a component it depends on (dependsOn) is in error; or (roost run --dir) dependent deployment is in error state: a deployment named in this one's spec.dependsOn is in error. Components of this deployment that already run keep running; the others wait.",
        "Fix the failing dependency first (troubleshoot the dependent deployment that is in error state: `roost status NAME`); this deployment goes on by itself once its dependencies run.";
    DEPENDENCY_NOT_FOUND = "DEP_E157", "Dependent deployment not found",
        "spec.dependsOn names a deployment that no deployment file of this device declares (roost run --dir), or roost runs a single file (--file), where no other deployment exists. The deployment's components wait; nothing is retried in a loop.",
        "Add the missing deployment's file to the folder, correct the name in spec.dependsOn, or remove the dependency.";
    DEPENDENCY_NOT_READY = "DEP_E158", "Waiting for a dependent deployment",
        "A deployment named in spec.dependsOn is not yet Succeeded and Running (being applied, starting, stopped); this deployment's components wait for it.",
        "Nothing, if the dependency is starting; otherwise see `roost status NAME` of the dependency. The components start by themselves once it runs.";
    EXECUTABLE_NOT_FOUND = "DEP_E161", "Executable not found or not executable",
        "The first element of the component's command does not exist, is not on PATH, or is not executable.",
        "Install the program or correct `command` in deployment.yaml (use an absolute path), and make it executable (chmod +x).";
    INVALID_SPEC = "DEP_E162", "Invalid desired state",
        "deployment.yaml could not be read or is invalid. The last valid desired state stays in force.",
        "Fix the file at the line and column or field given (`roost check --file FILE` shows it with the offending lines); roost applies the file as soon as it is valid.";
    CRASH_LOOP = "DEP_E163", "Crash loop",
        "A component keeps exiting soon after it starts; roost restarts it with growing back-off delays.",
        "Read `roost logs NAME` for the reason it exits; fix it and change the file, or set restartPolicy: Never to stop retrying.";
    OUT_OF_DESCRIPTORS = "DEP_E164", "Out of file descriptors",
        "A component could not be started because roost or the system ran out of file descriptors (EMFILE/ENFILE). Roost raises its own soft limit to the hard limit at start; this is the hard limit or the system-wide one.",
        "Raise LimitNOFILE= in roost.service (or `ulimit -n` for a roost started by hand) or fs.file-max, or run fewer components; roost retries with back-off.";
    USER_NOT_FOUND = "DEP_E165", "User not found",
        "A component's `user:` (or ROOST_USER for the built-ins) names a user this device does not have: the component cannot start.",
        "Create the user (`useradd --system NAME`), or correct `user:` in deployment.yaml.";
    STORAGE_UNUSABLE = "DEP_E301", "Storage unusable",
        "The storage folder or metadata.db cannot be created, written or opened.",
        "Check that spec.storage.path exists on a mounted, writable disk with the right owner and permissions.";
    LOW_DISK_SPACE = "DEP_E302", "Low disk space",
        "Free space on the storage is below spec.storage.minFreeSpace; the onLowSpace policy is being applied.",
        "Collect recordings from the device or add storage. The message says what spec.storage.onLowSpace does meanwhile: stop and discardNew keep every recording made (nothing new is written), deleteOldest makes room by deleting the oldest ones.";
    DISK_FULL = "DEP_E303", "Disk full while recording",
        "The disk filled while a recording was written; the file was ended early and registered.",
        "Free space on the storage disk; recording resumes when space is available.";
    RECORDINGS_DELETED = "DEP_E304", "Recordings deleted to keep free space",
        "onLowSpace: deleteOldest deleted the oldest registered recordings to keep minFreeSpace free. A warning: recording goes on; the names are in the recorder's report and log.",
        "Collect recordings from the device more often, add storage, or lower the sample rate or the recording windows.";
    AUDIO_DEVICE_UNAVAILABLE = "DEP_E311", "Audio device unavailable",
        "The configured audio input device is missing, busy or disappeared.",
        "Check the microphone connection and `arecord -L`; set spec.recorder.device to a listed name. Recording resumes by itself when the device returns.";
    AUDIO_FORMAT_UNSUPPORTED = "DEP_E312", "Audio format not supported",
        "The audio device does not support the requested sample rate, channel count or sample format.",
        "Choose a sampleRate, channels and sampleFormat the device supports (`arecord -D DEVICE --dump-hw-params`).";
    NO_RECORDINGS = "DEP_E313", "Recorder produces no recordings",
        "The recorder is running inside a recording window but has not produced a new file in time.",
        "Check `roost logs recorder` and the audio device; the recorder is restarted by its restart policy.";
    SAMPLES_DROPPED = "DEP_E314", "Samples dropped",
        "The recorder could not keep up and samples were lost (buffer overruns).",
        "Lower the sample rate, use faster storage, or reduce other load on the device.";
    INPUT_NOT_REAL_TIME = "DEP_E315", "Audio input faster than real time",
        "The audio device delivers samples much faster than its sample rate (a source that reached its end, a misconfigured device). Such samples cannot be given true times, so they are not recorded.",
        "Check spec.recorder.device and sampleRate against the device (`arecord -D DEVICE --dump-hw-params`) and what feeds it; recording resumes by itself once samples arrive in real time.";
    CLOCK_NOT_SYNCHRONIZED = "DEP_E316", "Wall clock not synchronised",
        "The kernel says the wall clock is not synchronised (no NTP or GPS time yet, no real-time clock). A warning: recording goes on, and each file's GUANO says whether its time was synchronised.",
        "Give the device a time source (network for NTP, a GPS or an RTC module) and check `timedatectl`; files recorded meanwhile may carry wrong times.";
    TIME_OVERLAP = "DEP_E317", "Recording times overlap",
        "A recording claims a start time before the end of an earlier one: the wall clock was stepped back. A warning: nothing is overwritten (the later file gets a -N name) and the overlap is written into its GUANO.",
        "Give the device a time source before recording starts (NTP, GPS, an RTC module); use the GUANO 'ROOST|Time Overlap' field to place the files.";
    NO_WINDOW_SOON = "DEP_E318", "No recording window soon",
        "The recorder waits outside its windows and the next one opens more than 7 days from now, or none opens within a year (a sunrise or sunset window in a polar day or night, a window between two identical times). A warning: nothing is recorded meanwhile.",
        "Check spec.recorder.windows and spec.location (latitude and longitude, sign included: west and south are negative); `roost status` shows when the next window opens and what it was computed from.";
    METADATA_DB_ERROR = "DEP_E321", "Metadata database error",
        "metadata.db could not be written or is damaged.",
        "Check the disk; roost repairs leftovers at start. If it persists, move metadata.db aside and restart roost.";
    METADATA_DB_NEWER = "DEP_E322", "Metadata database from a newer roost",
        "metadata.db says its layout (roost_schema.version) is newer than this roost knows: a newer roost wrote it. Roost leaves it as it is and registers no row in it; the recorder keeps recording and every file is registered once a roost that knows the layout runs.",
        "Upgrade roost to the version that wrote the storage (or newer). Do not delete metadata.db: it holds which files were kept, deleted and analysed.";
    METADATA_DB_MIGRATION = "DEP_E323", "Metadata database migration failed",
        "metadata.db could not be brought to this roost's layout (acoupi 0.8.0's tables; roost's own bookkeeping): the step was rolled back, the file is as it was, and it is tried again at each start and after each failure. The recorder keeps recording; rows are owed meanwhile.",
        "Read the message for SQLite's reason (disk full, a read-only card, a lock held by another program). Free space or fix the card; if it persists, copy metadata.db off the card and report it with roost's log.";
    INTERNAL = "DEP_E401", "Internal error",
        "Roost hit an unexpected internal error (a state file it cannot write, a bug).",
        "Check that the state folder is writable and read roost's own log (journalctl -u roost); report the bug with the log.";
    ROOST_NOT_RUNNING = "DEP_E402", "Roost not running",
        "The roost that wrote this status is not running (killed, crashed, out of memory): what the status says is what it last knew. Components it started may still run without supervision (the recorder keeps recording), but nothing restarts what fails and nothing reports new faults.",
        "Start roost again (`systemctl restart roost`, or your service manager's restart); it adopts what still runs. Read why it stopped in its log (`journalctl -u roost`, `dmesg` for the out-of-memory killer).";
    STATUS_OUT_OF_DATE = "DEP_E403", "Status out of date",
        "status.json has not been rewritten although the recorder's next file was due (plus 45 s: its own grace of 30 s, and time to write): roost cannot write it (a full or read-only card holding the state folder; the reason is given when roost could record it) or is stuck. What it says may no longer be true.",
        "Free space on the card that holds the state folder, or check it for errors (`dmesg`, `fsck`); read roost's log (`journalctl -u roost`). `roost status` clears this by itself once status.json is written again.";
    LINK_DOWN = "DEP_E501", "Link down",
        "Roost cannot reach the MQTT broker or the HTTP endpoint of spec.connect, for longer than spec.connect.outbox.warnAfter. A warning: recording goes on, and messages wait in the outbox (status.json shows its depth).",
        "Check the device's network (cellular signal, Wi-Fi) and the broker or endpoint (`mosquitto_sub -h HOST -p PORT -t '#'`, `curl URL`); messages are delivered, in order, once the link returns.";
    CREDENTIALS_REFUSED = "DEP_E502", "Credentials refused",
        "The MQTT broker refused the username or password (or the client is not authorised).",
        "Check spec.connect.mqtt.username and the file spec.connect.mqtt.passwordFile names (its first line is the password) against the broker's password file; roost retries with back-off.";
    CERTIFICATE_NOT_TRUSTED = "DEP_E503", "Certificate not trusted",
        "The broker's or endpoint's TLS certificate does not verify against the system's CA store and spec.connect's caFile (unknown issuer, expired, wrong host name).",
        "Give the CA that signed the server's certificate in caFile (PEM), check the host name in the url matches the certificate, and the device's clock (an unsynchronised clock makes valid certificates look expired).";
    HTTP_ENDPOINT_FAILING = "DEP_E504", "HTTP endpoint failing",
        "The HTTP endpoint of spec.connect.http answered with an error status or did not answer within its timeout.",
        "Check the endpoint's logs and the headers file (tokens); messages wait in the outbox and are sent again with back-off.";
    OUTBOX_FULL = "DEP_E505", "Outbox over its limits",
        "Messages waited longer than spec.connect.outbox.maxAge, or more than maxBytes waited: the oldest were dropped (counted in status.json).",
        "Restore the link, or raise maxBytes/maxAge if the device is often offline for long; status and heartbeats resume by themselves.";
    OUTBOX_UNREADABLE = "DEP_E506", "Outbox unreadable",
        "The outbox file (outbox.db in the state folder) could not be read as a database; it was set aside and a new one started. Messages it held were not sent.",
        "Check the card for errors (dmesg, fsck); the file set aside (outbox.db.bad-*) can be inspected with sqlite3.";
    SECRET_UNREADABLE = "DEP_E507", "Secret file unreadable",
        "A file spec.connect names (passwordFile, headersFile, caFile) cannot be read or parsed.",
        "Create the file with the secret (readable by roost, not by everyone: chmod 600), or fix its format (caFile: PEM certificates; headersFile: `Name: value` lines).";
    SECRET_EXPOSED = "DEP_E509", "Secret file readable by others",
        "A file holding a secret (spec.connect.mqtt.passwordFile, spec.connect.http.headersFile, spec.page.passwordFile) can be read by every user of the device (its mode gives others read). A warning: roost still uses it, as Mosquitto does with its password file; a private key so exposed is refused, as OpenSSH refuses one.",
        "Take it from others: `chown root:roost FILE && chmod 0640 FILE` (the built-ins run as user roost and read it through the group), or `chmod 0600 FILE` owned by roost.";
    MESSAGE_TOO_LARGE = "DEP_E508", "Message too large",
        "A message was larger than roost sends (256 KiB; the MQTT packet limit is 1 MiB) and could never be carried: it was dropped (counted as `oversized` in the connector's report) so that it blocks nothing behind it. A status too large is sent summarised (component outputs left out), never dropped.",
        "Nothing to do for one; if it repeats, read the connector's report for the topic and size, and shorten what makes the message large (many components, very long error messages from a program).";
    DETECTOR_NOT_FOUND = "DEP_E601", "Detector command not found or not executable",
        "The first element of a command detector's `command` does not exist, is not on PATH, or is not executable. Recordings are not analysed until it is fixed; they are not retried by themselves.",
        "Install the detector or correct `command` in deployment.yaml (use an absolute path), and make it executable (chmod +x); a script needs a first line such as `#!/usr/bin/env python3`.";
    DETECTOR_FAILED = "DEP_E602", "Detector exited with a failure",
        "A command detector exited with a non-zero status or was killed by a signal while analysing a recording. The end of its stderr is in the message; the recording is retried.",
        "Run the command by hand on the recording named in the message (the WAV's path is its last argument) and read what it prints on stderr: a missing model file, a Python package not installed, not enough memory.";
    DETECTOR_TIMED_OUT = "DEP_E603", "Detector timed out",
        "A command detector did not finish within its `timeout`; roost killed its whole process group. The recording is retried.",
        "Time the command by hand on the recording named in the message; raise `timeout`, use a smaller model, or record shorter files. On a Raspberry Pi, a first run may be slow while a model loads.";
    DETECTOR_BAD_OUTPUT = "DEP_E604", "Detector output is not roost's findings JSON",
        "A command detector exited successfully but what it printed on stdout is not the documented findings JSON (a syntax error at the line and column given, an unknown field, a value out of range), or is larger than 1 MiB. Nothing of it is kept.",
        "Make the command print only the findings JSON on stdout (docs/DETECTORS.md, schemas/findings.schema.json) and its progress messages on stderr (`>&2`); the message names the line and column or the field, e.g. detections[3].location[2].";
    DETECTOR_NOT_RUN = "DEP_E605", "Detector could not be run",
        "Roost could not start a command detector or read its output for a reason other than a missing program: out of file descriptors or processes, a pipe that failed. The recording is retried.",
        "Read roost's log for the system's reason (EMFILE, EAGAIN); raise LimitNOFILE= or LimitNPROC= in roost.service, or run fewer detectors at once.";
    DETECTOR_FAILED_ON_RECORDING = "DEP_E610", "A detector could not read a recording",
        "The built-in detector could not read one recording (not a WAV it reads, or unreadable); the recording is marked failed for it and the queue goes on.",
        "Look at the file named in the curator's report; nothing to do if it was cut by a fault (it is kept).";
    DETECTOR_BEHIND = "DEP_E611", "Detector falling behind",
        "More recordings wait for a detector than its maxBacklog: it is slower than the recorder. Keep rules wait for it, so files stay until it catches up.",
        "Use a lighter model or fewer detectors, raise maxBacklog if a backlog is expected (e.g. analysing at night), or record less.";
    DETECTOR_STALLED = "DEP_E612", "Detector stalled",
        "A detector finished no recording for 15 minutes while recordings wait.",
        "Read `roost logs curator`; check that the detector's command still works on a recent file by hand.";
    RECORDING_GONE = "DEP_E613", "Recording deleted before analysis",
        "A recording's file disappeared before every detector had seen it (deleted by hand or by another program); its row keeps its data with path cleared.",
        "Nothing, if it was deleted on purpose; otherwise find what deletes files in the storage.";
    KEEP_DELETES_EVERYTHING = "DEP_E614", "Keep rules keep nothing",
        "spec.storage.keep has rules, but none can keep a recording (e.g. only detection rules and no detector, or windows that never occur). A detection rule whose detector does not run judges nothing: such recordings are kept as notAnalysed, and only retention (maxAge, maxUsage) removes them.",
        "Add a rule that keeps something (always, a window, every: 10m), or a detector for the detection rule.";
    CURATOR_SILENT = "DEP_E615", "Curator not reporting",
        "The curator (detectors, keep rules, retention) has not written its report since it started, has not refreshed it for three and a half minutes (it rewrites it every minute, during a long detector run too: it is hung), or cannot use the storage.",
        "Read `roost logs curator`.";
    RECORDING_UNDESCRIBABLE = "DEP_E616", "Recording cannot be described",
        "A recording's row or WAV header holds numbers no recording can have (a sample rate of 0 or above 1.536 MHz, no channels, a duration that is not a number or longer than a day, more data than the file holds). It is set aside: never analysed or deleted by a rule, and never computed with; the others go on. A WAV with such a header found in recordings/ at start is moved to quarantine/.",
        "Look at the file named in the message (e.g. with soxi); if it is not a recording of this device, move it out of the storage; fix or delete the row with sqlite3 if it was written by another program.";
    PAGE_OPEN = "DEP_E701", "Page open without a password",
        "spec.page listens on an address other devices can reach and has no passwordFile: anyone on that network (the hotspot, or every network with 0.0.0.0) sees the device's state and recordings. A warning.",
        "Set spec.page.passwordFile to a file holding a password (mode 0640, group roost), or listen on the hotspot's address only, or on 127.0.0.1 (the default).";
    DESIRED_NOT_SIGNED = "DEP_E801", "Desired state not signed or signature invalid",
        "A desired-state message on the device's desired topic has no minisign signature, a signature that is not minisign's format, or one that does not verify against the key it names (the message was altered, or signed over other bytes). Nothing of it was applied; the device keeps its deployment.",
        "Sign with `roost fleet rollout --key` or `minisign -S` over the message's `document` exactly as published; check that nothing between the signer and the broker re-encodes it.";
    DESIRED_UNTRUSTED_KEY = "DEP_E802", "Desired state signed by an untrusted key",
        "The message is signed by a key whose public key is not in spec.connect.desired.trustedKeys (the key id is in the message), or that folder holds no readable key. Nothing was applied.",
        "Copy the fleet's public key (`minisign.pub`) into the trustedKeys folder on the device, or sign with a key that is there; a device that trusts no key can only be changed on site (docs/FLEET.md).";
    DESIRED_OTHER_DEVICE = "DEP_E803", "Desired state for another device",
        "The signed message names another device id than this one (spec.connect.deviceId, or the id from /etc/machine-id): it was copied or published to the wrong topic. Nothing was applied.",
        "Publish each device's message to its own topic `<topicPrefix>/<deviceId>/desired`; `roost fleet rollout` does.";
    DESIRED_NOT_NEWER = "DEP_E804", "Desired state not newer than the one applied",
        "The message's version is lower than the highest version this device has accepted (a replay of an old message, or a controller that counts from a lower number). Freshness is the version, never the clock. Nothing was applied.",
        "Publish a version higher than the device reports as `highestVersion` (`roost fleet` shows it); `roost fleet rollout` picks one by itself.";
    DESIRED_TOO_LARGE = "DEP_E805", "Desired state message too large",
        "The message is larger than 1 MiB, the most a device takes. Nothing was applied.",
        "Send smaller deployment files (a deployment file is a few KiB; large data belongs in files the deployment names, not in it).";
    DESIRED_INVALID = "DEP_E806", "Desired state does not validate",
        "The signed message's deployment file (named in the message, with line and column) is not a valid deployment, its file names are not deployment file names, or a `--file` device was sent several files. Nothing was applied; the device keeps its deployment.",
        "Run `roost check --offline FILE` on the file before a rollout, fix what it names, and publish a new version.";
    DESIRED_REVERTED = "DEP_E807", "Desired state reverted by the health gate",
        "A version applied from the broker made the device worse within its health gate (a deployment in error, a crash loop, a recorder that stopped: the codes are in the message) and the device went back to the files it had before. That version is not applied again; a newer one is.",
        "Read the codes that caused it (`roost status`, `roost fleet`), fix the deployment and publish a newer version.";
    DESIRED_MALFORMED = "DEP_E808", "Desired state message malformed",
        "The message on the desired topic is not roost's desired-state JSON (`kind`, `document`, `signature`), or its signed document is not (`device`, `version`, `files`). Nothing was applied.",
        "Publish messages made by `roost fleet rollout`, or follow docs/FLEET.md's format exactly.";
    DESIRED_NOT_APPLIED = "DEP_E809", "Desired state could not be written",
        "An accepted version could not be written into the deployment file or folder (a read-only or full card): the device keeps what it had, the version counts as not applied, and it is tried again when the message arrives again (at the next connection).",
        "Free space on the card or check it for errors (`dmesg`); read roost's log.";
    UNDERVOLTAGE = "DEP_E901", "Undervoltage now",
        "The board's supply is below what it needs (the Raspberry Pi firmware's undervoltage bit or the `rpi_volt` alarm). At this voltage SD cards get corrupted and boards reboot in loops; recordings may be lost with the card.",
        "Use a supply that holds its voltage under load (5.1 V, 3 A for a Pi 4; short, thick cables); on a battery or solar setup check the regulator, the battery's charge and the wiring's voltage drop. `spec.power.saving.onUndervoltage` can pause work meanwhile.";
    UNDERVOLTAGE_SINCE_BOOT = "DEP_E902", "Undervoltage since boot",
        "The supply fell below what the board needs at some time since it booted, though not now: a weak supply that sags under load (a detector run, a Wi-Fi burst).",
        "Check the supply, its cable and the battery's charge before the next sag corrupts the card; the warning clears at the next boot.";
    THROTTLED = "DEP_E903", "Processor throttled or capped",
        "The firmware caps or throttles the processor's clock now, for low voltage or heat. Audio taken meanwhile may glitch; each recording's GUANO says whether it was made so.",
        "Fix the supply (DEP_E901) or the heat (DEP_E904): shade the box, ventilate it, add a heat sink.";
    TOO_HOT = "DEP_E904", "Board too hot",
        "The SoC's temperature is at or above `spec.power.hotCelsius` (default 80 °C), or the firmware's soft temperature limit is active: the board slows down, and hotter still it throttles hard.",
        "Shade the enclosure, give it air, paint it light, add a heat sink; move it out of the afternoon sun.";
    BATTERY_LOW = "DEP_E905", "Battery low",
        "The battery is below `spec.power.batteryLowPercent` (default 20 %) and not charging: the device will stop when it is empty.",
        "Charge or replace the battery, check the solar panel (angle, dirt, shade) and the charger; `spec.power.saving` can pause detectors and recording to last longer.";
    POWER_SAVING = "DEP_E906", "Paused to save power",
        "The energy policy (`spec.power.saving`) pauses work while power is short: first detectors and the page's spectrograms (recording goes on), then recording itself (after the current file, which is kept). It resumes by itself once power is back past the hysteresis.",
        "Restore power (charge the battery, fix the supply); to record through it, lower or remove `spec.power.saving`'s thresholds.";
}

/// An error and its causes (`source()` chain) on one line, `: `-separated, for logs and reports.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s += &format!(": {c}");
        cur = c.source();
    }
    s
}

/// DEP_E151's action on a device (`roost status`, status.json): its runtime.
pub const RUNTIME_UNREACHABLE_ON_DEVICE: &str = "Check that systemd is running and its D-Bus socket is reachable (`systemctl is-system-running`); roost retries with back-off and recovers by itself when the runtime returns.";
/// DEP_E151's action in `roost fleet`: a device that is offline.
pub const RUNTIME_UNREACHABLE_IN_FLEET: &str = "Check the device's power (battery, solar), its network link (cellular signal, Wi-Fi) and that `roost run` is running (`roost status` on the device); its messages wait in its outbox and arrive once it is back.";

/// The action said where `code` is reported on the device itself: DEP_E151's device half,
/// every other code's catalogue action.
pub fn action_on_device(code: &ErrorCode) -> &'static str {
    if code.code == RUNTIME_UNREACHABLE.code {
        RUNTIME_UNREACHABLE_ON_DEVICE
    } else {
        code.action
    }
}

/// Looks a code up as people type it: `DEP_E317`, `dep_e317`, `DEP-E317`, `E317`, `e317` or
/// `317` (case, the `DEP_` prefix and the `E` are optional).
pub fn lookup(code: &str) -> Option<&'static ErrorCode> {
    let upper = code.trim().to_ascii_uppercase().replace('-', "_");
    let bare = upper.strip_prefix("DEP_").unwrap_or(&upper);
    let digits = bare.strip_prefix('E').unwrap_or(bare);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = format!("DEP_E{digits}");
    CATALOGUE.iter().find(|c| c.code == full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_found_however_it_is_typed() {
        for typed in [
            "DEP_E317", "dep_e317", "DEP-E317", "E317", "e317", "317", " 317 ",
        ] {
            assert_eq!(lookup(typed).map(|c| c.code), Some("DEP_E317"), "{typed}");
        }
        for wrong in ["", "E", "DEP_", "31a", "DEP_E999", "E3170"] {
            assert_eq!(lookup(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn codes_are_unique_and_complete() {
        let mut seen = std::collections::BTreeSet::new();
        for c in CATALOGUE {
            assert!(seen.insert(c.code), "duplicate {}", c.code);
            assert!(!c.action.is_empty() && !c.description.is_empty());
        }
        assert_eq!(lookup("dep_e162").unwrap().code, "DEP_E162");
    }
}
