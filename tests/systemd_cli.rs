//! `roost run --runtime systemd --user` as a user would start it, against a real private
//! `systemd --user`: units appear, status.json says `systemd`, the components outlive roost,
//! and a restarted roost adopts them without restarting them.

mod common;
#[path = "support/systemd_sandbox.rs"]
mod sandbox;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn start_roost(r: &mut Roost, sb: &sandbox::Sandbox) {
    let child = Command::new(ROOST)
        .args(["run", "--runtime", "systemd", "--user", "--file"])
        .arg(&r.file)
        .arg("--state-dir")
        .arg(&r.state)
        .env("DBUS_SESSION_BUS_ADDRESS", sb.bus_address())
        .env("XDG_RUNTIME_DIR", sb.dir().join("xdg"))
        .env("XDG_CONFIG_HOME", sb.dir().join("config"))
        .env("HOME", sb.dir().join("home"))
        .env("ROOST_LOG", "debug")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(r.path("roost.log")).unwrap())
        .spawn()
        .unwrap();
    r.child = Some(child);
}

#[tokio::test(flavor = "current_thread")]
async fn run_with_the_user_manager_and_adopt_after_a_restart_of_roost() {
    let sb = sandbox::Sandbox::start().await;
    let tag = unique("sd-cli");
    let mut r = Roost::new(&deployment("sdcli", "", &sleeper("worker", &tag)));
    start_roost(&mut r, &sb);
    let s = r.wait_succeeded(1);
    assert_eq!(s["reconciler"]["runtime"], "systemd");
    let pid = pid_of(&s, "worker");
    let unit = sb
        .dir()
        .join("config/systemd/user/roost-sdcli-worker.service");
    assert!(
        unit.exists(),
        "unit file written where the user manager reads it"
    );
    assert!(std::fs::read_to_string(&unit).unwrap().contains(&tag));

    // roost stops; the unit keeps running (systemd owns it now)
    assert_eq!(r.stop(), Some(0));
    assert!(alive(pid), "components outlive roost under systemd");

    // roost comes back and adopts it: same pid, no restart counted
    start_roost(&mut r, &sb);
    let s = r.wait_for("adopted", Duration::from_secs(20), |s| {
        s["reconciler"]["pid"].as_u64() == Some(r.pid() as u64) && s["phase"] == "Succeeded"
    });
    assert_eq!(pid_of(&s, "worker"), pid);
    assert_eq!(component(&s, "worker")["restartCount"], 0);

    // systemd restarts a killed component; roost counts it (NRestarts)
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let s = r.wait_for("restarted by systemd", Duration::from_secs(20), |s| {
        component(s, "worker")["status"] == "Running"
            && component(s, "worker")["pid"]
                .as_u64()
                .is_some_and(|p| p != pid)
            && component(s, "worker")["restartCount"] == 1
    });
    let pid = pid_of(&s, "worker");

    // state: stopped stops the unit through roost (which resets NRestarts: the count stays)
    r.replace_atomically(&deployment(
        "sdcli",
        "  state: stopped\n",
        &sleeper("worker", &tag),
    ));
    r.wait_for("stopped", Duration::from_secs(20), |s| {
        s["phase"] == "Stopped"
    });
    assert!(!alive(pid));
    r.replace_atomically(&deployment("sdcli", "", &sleeper("worker", &tag)));
    let s = r.wait_succeeded(3);
    assert_eq!(
        component(&s, "worker")["restartCount"],
        1,
        "restart counts survive a stop"
    );
    r.stop();
}
