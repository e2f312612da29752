//! Every way a desired-state file gets written is noticed (real inotify, real roost), and a bad
//! or deleted file never disturbs what runs.

mod common;

use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use common::*;

fn yaml(version: u32) -> String {
    deployment(
        "watch",
        "",
        &sleeper("a", &format!("watch-a-v{version}-{}", std::process::id())),
    )
}

/// Starts roost on `file`, then applies each writer in turn and checks each version lands.
fn converges_through(r: &mut Roost, file: &Path, write: impl Fn(&Roost, u32)) {
    r.start_with_file(file);
    r.wait_succeeded(1);
    for v in 2..=4 {
        write(r, v);
        let s = r.wait_succeeded(u64::from(v));
        assert!(s["specError"].is_null(), "{s:#}");
    }
}

#[test]
fn editor_rename_over_the_file() {
    let mut r = Roost::new(&yaml(1));
    let file = r.file.clone();
    converges_through(&mut r, &file, |r, v| {
        // vim/emacs style: write a swap file, rename it over the target
        let tmp = r.path("deployment.yaml~");
        std::fs::write(&tmp, yaml(v)).unwrap();
        std::fs::rename(&tmp, &r.file).unwrap();
    });
}

#[test]
fn cp_truncates_and_writes_in_chunks() {
    let mut r = Roost::new(&yaml(1));
    let file = r.file.clone();
    converges_through(&mut r, &file, |r, v| {
        let text = yaml(v);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&r.file)
            .unwrap();
        // Half a file is valid YAML up to a point; roost must wait for the writer to close.
        let (first, second) = text.split_at(text.len() / 2);
        f.write_all(first.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        f.write_all(second.as_bytes()).unwrap();
    });
    let log = std::fs::read_to_string(r.path("roost.log")).unwrap();
    assert!(
        !log.contains("desired state rejected"),
        "a half-written file was read:\n{log}"
    );
}

#[test]
fn atomic_rename_by_configuration_management() {
    let mut r = Roost::new(&yaml(1));
    let file = r.file.clone();
    converges_through(&mut r, &file, |r, v| {
        // Ansible: temp file in the same folder, then rename
        let tmp = r.path(".ansible_tmpXYZdeployment.yaml");
        std::fs::write(&tmp, yaml(v)).unwrap();
        std::fs::rename(&tmp, &r.file).unwrap();
    });
}

#[test]
fn configmap_data_symlink_swap() {
    let mut r = Roost::new("");
    let dir = r.path("config");
    std::fs::create_dir(&dir).unwrap();
    let write_version = |dir: &Path, v: u32| {
        let ts = dir.join(format!("..2026_v{v}"));
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("deployment.yaml"), yaml(v)).unwrap();
        let tmp = dir.join("..data_tmp");
        symlink(format!("..2026_v{v}"), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
    };
    write_version(&dir, 1);
    symlink("..data/deployment.yaml", dir.join("deployment.yaml")).unwrap();
    converges_through(&mut r, &dir.join("deployment.yaml"), |r, v| {
        write_version(&r.path("config"), v)
    });
}

#[test]
fn git_sync_worktree_link_swap() {
    let mut r = Roost::new("");
    let root = r.path("git");
    std::fs::create_dir(&root).unwrap();
    let write_version = |root: &Path, v: u32| {
        let wt = root.join(format!("rev-{v:040}"));
        std::fs::create_dir_all(wt.join("site")).unwrap();
        std::fs::write(wt.join("site/deployment.yaml"), yaml(v)).unwrap();
        let tmp = root.join("tmp-link");
        symlink(&wt, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("current")).unwrap();
    };
    write_version(&root, 1);
    converges_through(
        &mut r,
        &root.join("current/site/deployment.yaml"),
        |r, v| write_version(&r.path("git"), v),
    );
}

#[test]
fn delete_and_recreate_keeps_running() {
    let mut r = Roost::new(&yaml(1));
    r.start();
    let s = r.wait_succeeded(1);
    let pid = pid_of(&s, "a");
    std::fs::remove_file(&r.file).unwrap();
    let s = r.wait_for("missing file reported", Duration::from_secs(10), |s| {
        !s["specError"].is_null()
    });
    assert_eq!(
        pid_of(&s, "a"),
        pid,
        "deleting the file must not stop anything"
    );
    assert_eq!(s["phase"], "Succeeded");
    assert!(
        s["specError"]["message"]
            .as_str()
            .unwrap()
            .contains("deployment.yaml")
    );
    std::fs::write(&r.file, yaml(2)).unwrap();
    let s = r.wait_succeeded(2);
    assert!(s["specError"].is_null());
}

#[test]
fn invalid_file_keeps_the_last_good_state_and_reports_where() {
    let mut r = Roost::new(&yaml(1));
    r.start();
    let s = r.wait_succeeded(1);
    let pid = pid_of(&s, "a");
    r.replace_atomically(&yaml(2).replace("command:", "comand:"));
    let s = r.wait_for("spec error", Duration::from_secs(10), |s| {
        !s["specError"].is_null()
    });
    let e = &s["specError"];
    assert_eq!(e["code"], "DEP_E162");
    assert_eq!(e["line"], 9, "{e}");
    assert_eq!(e["column"], 7, "{e}");
    assert!(e["file"].as_str().unwrap().ends_with("deployment.yaml"));
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"command\""),
        "{e}"
    );
    assert_eq!(s["generation"], 1);
    assert_eq!(pid_of(&s, "a"), pid);
    assert_eq!(s["phase"], "Succeeded");
    r.replace_atomically(&yaml(3));
    let s = r.wait_succeeded(2);
    assert!(s["specError"].is_null());
}

#[test]
fn invalid_file_at_start_is_reported() {
    let mut r = Roost::new(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: Bad_Name}\nspec: {}\n",
    );
    r.start();
    let s = r.wait_for("spec error", Duration::from_secs(10), |s| {
        !s["specError"].is_null()
    });
    assert_eq!(s["status"], "Error");
    assert_eq!(s["specError"]["line"], 3);
    r.replace_atomically(&yaml(1));
    r.wait_succeeded(1);
}

#[test]
fn a_folder_created_after_start_is_seen() {
    let mut r = Roost::new("");
    let file = r.path("etc/roost/deployment.yaml");
    r.start_with_file(&file);
    let s = r.wait_for("missing file reported", Duration::from_secs(10), |s| {
        !s["specError"].is_null()
    });
    assert!(
        s["specError"]["message"]
            .as_str()
            .unwrap()
            .contains("etc/roost/deployment.yaml")
    );
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, yaml(1)).unwrap();
    r.wait_succeeded(1);
}

/// A writer that opens the file, writes part of it, pauses (a line-by-line `cat > file`, scp
/// over a slow link, a script writing in pieces) and then writes the rest: the part alone is a
/// valid file without component b, and must never be applied.
#[test]
fn a_writer_that_pauses_is_waited_for_and_half_a_file_never_applied() {
    let tag = unique("pause");
    let full = deployment(
        "pause",
        "",
        &format!(
            "{}{}",
            sleeper("a", &format!("{tag}-a")),
            sleeper("b", &format!("{tag}-b"))
        ),
    );
    let half = deployment("pause", "", &sleeper("a", &format!("{tag}-a")));
    assert!(
        full.starts_with(&half),
        "the first part is a valid file on its own"
    );
    let mut r = Roost::new(&full);
    r.start();
    let s = r.wait_succeeded(1);
    let b_pid = pid_of(&s, "b");
    for pause_ms in [400u64, 2500] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&r.file)
            .unwrap();
        f.write_all(half.as_bytes()).unwrap();
        f.flush().unwrap();
        let until = std::time::Instant::now() + Duration::from_millis(pause_ms);
        while std::time::Instant::now() < until {
            let s = r.status().unwrap();
            assert_eq!(s["generation"], 1, "half a file was applied: {s:#}");
            assert_eq!(pid_of(&s, "b"), b_pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        f.write_all(&full.as_bytes()[half.len()..]).unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(300));
        let s = r.status().unwrap();
        assert_eq!(s["generation"], 1, "the same content is no new generation");
        assert_eq!(pid_of(&s, "b"), b_pid, "b was never stopped");
    }
    assert!(alive(b_pid));
}

/// Two writers: the new content is read only when the last of them has closed the file.
#[test]
fn the_file_is_read_only_when_every_writer_has_closed_it() {
    let mut r = Roost::new(&yaml(1));
    r.start();
    r.wait_succeeded(1);
    // A second writer (a script that keeps the file open) holds it while an editor writes.
    let holder = std::fs::OpenOptions::new()
        .append(true)
        .open(&r.file)
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&r.file)
        .unwrap();
    f.write_all(yaml(2).as_bytes()).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        r.status().unwrap()["generation"],
        1,
        "read while another writer still had the file open"
    );
    drop(holder);
    let s = r.wait_succeeded(2);
    assert!(s["specError"].is_null(), "{s:#}");
}
