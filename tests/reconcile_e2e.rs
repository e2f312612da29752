//! End to end on real processes: convergence, restart policies, dependencies, signals, roost
//! killed and restarted, and a status file that is never torn.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn converges_and_changing_one_component_keeps_the_others() {
    let (ta, tb) = (unique("a"), unique("b"));
    let mut r = Roost::new(&deployment(
        "keep",
        "",
        &(sleeper("a", &ta) + &sleeper("b", &tb)),
    ));
    r.start();
    let s = r.wait_succeeded(1);
    let (pa, pb) = (pid_of(&s, "a"), pid_of(&s, "b"));
    assert_eq!(s["reconciler"]["runtime"], "process");
    // change only b
    r.replace_atomically(&deployment(
        "keep",
        "",
        &(sleeper("a", &ta) + &sleeper("b", &format!("{tb}-v2"))),
    ));
    let s = r.wait_succeeded(2);
    assert_eq!(pid_of(&s, "a"), pa, "a must keep its process");
    assert_ne!(pid_of(&s, "b"), pb);
    assert!(!alive(pb), "old b must be gone");
    assert_eq!(processes_with(&tb).len(), 1, "exactly one b");
    // stop via the file
    r.replace_atomically(&deployment(
        "keep",
        "  state: stopped\n",
        &(sleeper("a", &ta) + &sleeper("b", &format!("{tb}-v2"))),
    ));
    let s = r.wait_for("Stopped", WAIT, |s| s["phase"] == "Stopped");
    assert_eq!(s["status"], "Stopped");
    assert!(processes_with(&ta).is_empty() && processes_with(&tb).is_empty());
    assert_eq!(r.stop(), Some(0));
}

#[test]
fn restart_policies() {
    let comps = [
        shell(
            "always-ok",
            "sleep 0.2; exit 0",
            "      restartPolicy: Always\n",
        ),
        shell("onfail-ok", "exit 0", "      restartPolicy: OnFailure\n"),
        shell(
            "onfail-bad",
            "sleep 0.2; exit 3",
            "      restartPolicy: OnFailure\n",
        ),
        shell("never-bad", "exit 4", "      restartPolicy: Never\n"),
        shell("never-ok", "exit 0", "      restartPolicy: Never\n"),
        shell("killed", "kill -9 $$", "      restartPolicy: Never\n"),
    ]
    .concat();
    let mut r = Roost::new(&deployment("policies", "", &comps));
    r.start();
    let s = r.wait_for("policies to play out", WAIT, |s| {
        let c = |n| component(s, n);
        c("always-ok")["restartCount"].as_u64() >= Some(2)
            && c("onfail-bad")["restartCount"].as_u64() >= Some(2)
            && c("onfail-ok")["reason"] == "Completed"
            && c("never-bad")["reason"] == "Failed"
            && c("never-ok")["reason"] == "Completed"
            && c("killed")["reason"] == "Failed"
    });
    assert_eq!(component(&s, "onfail-ok")["status"], "Stopped");
    assert_eq!(component(&s, "onfail-ok")["restartCount"], 0);
    assert_eq!(component(&s, "never-bad")["status"], "Error");
    assert_eq!(component(&s, "never-bad")["exitCode"], 4);
    assert_eq!(component(&s, "killed")["exitCode"], 128 + 9);
    assert_eq!(s["phase"], "FailedToStart");
    assert_eq!(s["status"], "Error");
    assert!(
        s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == "DEP_E152" && e["component"] == "never-bad")
    );
}

#[test]
fn crash_loop_is_reported_and_counts_survive_a_restart_of_roost() {
    let yaml = deployment(
        "loop",
        "",
        &shell("crasher", "exit 1", "      restartPolicy: Always\n"),
    )
    .replace("initial: 0s, max: 1s", "initial: 100ms, max: 400ms");
    let mut r = Roost::new(&yaml);
    r.start();
    let s = r.wait_for("crash loop", WAIT, |s| {
        component(s, "crasher")["reason"] == "CrashLoopBackOff"
    });
    assert_eq!(component(&s, "crasher")["status"], "Error");
    assert!(
        s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == "DEP_E163")
    );
    r.stop();
    let before = component(&r.status().unwrap(), "crasher")["restartCount"]
        .as_u64()
        .unwrap();
    assert!(before >= 2);
    r.start();
    r.wait_for("count to carry on", WAIT, |s| {
        component(s, "crasher")["restartCount"].as_u64() > Some(before)
    });
    // a changed spec starts counting afresh
    r.replace_atomically(&yaml.replace("exit 1", "sleep 1000"));
    let s = r.wait_succeeded(2);
    assert_eq!(component(&s, "crasher")["restartCount"], 0);
}

#[test]
fn a_failed_dependency_holds_its_dependents_back() {
    let comps = [
        "    - name: base\n      command: [\"/opt/nowhere/base\"]\n      restartPolicy: Never\n"
            .to_string(),
        sleeper("top", &unique("top")).replace(
            "stopTimeout: 2s\n",
            "stopTimeout: 2s\n      dependsOn: [base]\n",
        ),
    ]
    .concat();
    let mut r = Roost::new(&deployment("deps", "", &comps));
    r.start();
    let s = r.wait_for("dependency failure", WAIT, |s| {
        component(s, "top")["reason"] == "DependencyFailed"
    });
    assert_eq!(component(&s, "top")["pid"], serde_json::Value::Null);
    assert!(
        s["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == "DEP_E156" && e["component"] == "top")
    );
    assert_eq!(s["phase"], "FailedToStart");
}

#[test]
fn start_order_follows_depends_on() {
    let log = std::env::temp_dir().join(unique("order"));
    let comps = [
        shell(
            "c",
            &format!("echo c >> {}; sleep 1000", log.display()),
            "      dependsOn: [b]\n",
        ),
        shell(
            "b",
            &format!("echo b >> {}; sleep 1000", log.display()),
            "      dependsOn: [a]\n",
        ),
        shell("a", &format!("echo a >> {}; sleep 1000", log.display()), ""),
    ]
    .concat();
    let mut r = Roost::new(&deployment("order", "", &comps));
    r.start();
    let s = r.wait_succeeded(1);
    std::thread::sleep(Duration::from_millis(200));
    // Started in dependsOn order: each process started no earlier than the one it depends on
    // (kernel start times; the shells' own echoes may interleave once both run).
    let started = |name: &str| {
        let pid = common::pid_of(&s, name);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[19].parse::<u64>().unwrap()
    };
    assert!(started("a") <= started("b") && started("b") <= started("c"));
    let mut lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    assert_eq!(lines, ["a", "b", "c"]);
    let _ = std::fs::remove_file(log);
}

#[test]
fn executable_not_found() {
    let comps =
        "    - name: ghost\n      command: [\"/opt/nowhere/ghost\"]\n      restartPolicy: Never\n";
    let mut r = Roost::new(&deployment("ghost", "", comps));
    r.start();
    let s = r.wait_for("not found", WAIT, |s| {
        component(s, "ghost")["reason"] == "ExecutableNotFound"
    });
    let err = s["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["code"] == "DEP_E161")
        .unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("/opt/nowhere/ghost"),
        "{err}"
    );
    assert!(err["action"].as_str().unwrap().contains("command"));
    // What the last apply tried and how much of it failed.
    assert!(s["lastApply"]["tried"].as_u64() >= Some(1), "{s:#}");
    assert_eq!(s["lastApply"]["failed"], s["lastApply"]["tried"], "{s:#}");
}

#[test]
fn roost_killed_with_sigkill_leaves_no_orphans_or_duplicates() {
    let tag = unique("survivor");
    let mut r = Roost::new(&deployment("kill9", "", &sleeper("s", &tag)));
    r.start();
    let s = r.wait_succeeded(1);
    let old = pid_of(&s, "s");
    r.kill9();
    assert!(
        alive(old),
        "components outlive a SIGKILLed roost until it returns"
    );
    r.start();
    let s = r.wait_for("replacement", WAIT, |s| {
        s["reconciler"]["pid"].as_u64() == Some(r.pid() as u64) && s["phase"] == "Succeeded"
    });
    assert!(!alive(old), "the orphan must be gone");
    assert_ne!(pid_of(&s, "s"), old);
    assert_eq!(processes_with(&tag).len(), 1, "no duplicate");
    assert_eq!(s["generation"], 1, "same file, same generation");
    assert_eq!(r.stop(), Some(0));
    assert!(
        processes_with(&tag).is_empty(),
        "SIGTERM stops the components"
    );
    let s = r.status().unwrap();
    assert_eq!(s["phase"], "Stopped");
}

#[test]
fn sighup_rereads_and_sigint_stops() {
    let tag = unique("hup");
    let mut r = Roost::new(&deployment("hup", "", &sleeper("a", &tag)));
    r.start();
    r.wait_succeeded(1);
    // Write without any event roost would see: through a hard link made before the watch? A
    // plain write is seen by inotify too, so check that SIGHUP alone also converges.
    r.signal("HUP");
    r.wait_succeeded(1);
    r.signal("INT");
    let code = r.child.as_mut().unwrap().wait().unwrap().code();
    r.child = None;
    assert_eq!(code, Some(0));
    assert!(processes_with(&tag).is_empty());
}

#[test]
fn status_file_is_never_torn_during_churn() {
    let comps = (0..4)
        .map(|i| {
            shell(
                &format!("churn{i}"),
                "sleep 0.05; exit 1",
                "      restartPolicy: Always\n",
            )
        })
        .collect::<String>();
    let mut r = Roost::new(
        &deployment("churn", "", &comps).replace("initial: 0s, max: 1s", "initial: 0s, max: 0s"),
    );
    r.start();
    r.wait_for("first status", WAIT, |_| true);
    let path = r.state.join("status.json");
    let mut reads = 0;
    let mut generations_seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut edits = 0;
    while std::time::Instant::now() < deadline || reads < 5000 {
        let bytes = std::fs::read(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("torn status after {reads} reads: {e}"));
        generations_seen.insert(doc["generation"].as_u64().unwrap());
        reads += 1;
        if reads % 500 == 0 && edits < 5 {
            edits += 1;
            r.replace_atomically(
                &deployment("churn", "", &comps)
                    .replace("sleep 0.05", &format!("sleep 0.0{edits}")),
            );
        }
    }
    assert!(reads >= 5000);
    assert!(
        generations_seen.len() > 1,
        "edits happened during the reads"
    );
}

#[test]
fn a_restart_of_roost_keeps_completed_jobs_done_and_restarts_the_rest_uncounted() {
    let tag = unique("steady");
    let comps = [
        shell(
            "job",
            "echo ran >> job.out; exit 0",
            "      restartPolicy: OnFailure\n",
        ),
        sleeper("steady", &tag),
    ]
    .concat();
    let mut r = Roost::new(&deployment("restarts", "", &comps).replace(
        "      stopTimeout: 2s\n",
        &format!(
            "      stopTimeout: 2s\n      workingDir: {}\n",
            std::env::temp_dir().display()
        ),
    ));
    let out = std::env::temp_dir().join("job.out");
    let _ = std::fs::remove_file(&out);
    r.start();
    r.wait_for("job done", WAIT, |s| {
        component(s, "job")["reason"] == "Completed"
            && component(s, "steady")["status"] == "Running"
    });
    assert_eq!(r.stop(), Some(0));
    r.start();
    let s = r.wait_for("back", WAIT, |s| {
        s["reconciler"]["pid"].as_u64() == Some(r.pid() as u64) && s["phase"] == "Succeeded"
    });
    assert_eq!(
        component(&s, "job")["reason"],
        "Completed",
        "a completed job is not run again by a restart of roost"
    );
    assert_eq!(
        component(&s, "steady")["restartCount"],
        0,
        "a restart of roost is not a restart of the component"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    let _ = std::fs::remove_file(&out);
}

#[test]
fn a_restart_of_roost_with_a_broken_file_runs_the_last_valid_state() {
    let tag = unique("lastgood");
    let mut r = Roost::new(&deployment("lastgood", "", &sleeper("a", &tag)));
    r.start();
    r.wait_succeeded(1);
    r.replace_atomically("apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: lastgood}\nspec: {components: [}\n");
    r.wait_for("spec error", WAIT, |s| !s["specError"].is_null());
    r.kill9(); // e.g. a power cut while the file is broken
    std::fs::remove_file(&r.file).unwrap();
    r.start();
    let s = r.wait_for("last valid state running", WAIT, |s| {
        s["reconciler"]["pid"].as_u64() == Some(r.pid() as u64) && s["phase"] == "Succeeded"
    });
    assert!(!s["specError"].is_null(), "the problem stays reported");
    assert_eq!(s["generation"], 1);
    assert_eq!(processes_with(&tag).len(), 1);
    // A script that pushed the file learns it was refused: exit 1, the rejection first.
    let out = std::process::Command::new(ROOST)
        .args(["status", "--state-dir"])
        .arg(&r.state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("The desired state was refused (DEP_E162)"),
        "{text}"
    );
}

#[test]
fn a_component_ignoring_sigterm_is_killed_after_its_stop_timeout_with_its_whole_group() {
    let tag = unique("stubborn");
    let script =
        format!("trap '' TERM; sleep 1000 & sleep 1000 & while :; do sleep 1; done # {tag}");
    let comps = shell("stubborn", &script, "").replace("stopTimeout: 2s", "stopTimeout: 1s");
    let mut r = Roost::new(&deployment("stubborn", "", &comps));
    r.start();
    let s = r.wait_succeeded(1);
    let pgid = pid_of(&s, "stubborn");
    let t0 = std::time::Instant::now();
    r.replace_atomically(&deployment("stubborn", "  state: stopped\n", &comps));
    r.wait_for("stopped", WAIT, |s| s["phase"] == "Stopped");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "stopTimeout must be honoured, took {took:?}"
    );
    let group_left: Vec<u32> = processes_in_group(pgid as u32);
    assert!(group_left.is_empty(), "left in the group: {group_left:?}");
}

#[test]
fn a_second_roost_on_the_same_state_folder_is_refused() {
    let tag = unique("single");
    let mut r = Roost::new(&deployment("single", "", &sleeper("a", &tag)));
    r.start();
    let s = r.wait_succeeded(1);
    let out = std::process::Command::new(ROOST)
        .args(["run", "--runtime", "process", "--file"])
        .arg(&r.file)
        .arg("--state-dir")
        .arg(&r.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another roost is already running"));
    assert!(
        alive(pid_of(&s, "a")),
        "the first one's components are untouched"
    );
    assert_eq!(processes_with(&tag).len(), 1);
}
