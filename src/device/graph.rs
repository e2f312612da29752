//! The device's deployments seen together (`roost run --dir`), pure: what clashes between
//! them (a second recorder, a storage or unit name taken, a cycle of `spec.dependsOn`), what
//! each deployment's dependencies mean for it ([`Links`]), and the device's status document.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::plan::gate::{Hold, Links};
use crate::spec::Deployment;
use crate::status::{OverallStatus, Phase, StatusDoc};

/// One deployment in force on the device: its file and its valid desired state.
#[derive(Clone, Debug)]
pub struct InForce {
    /// The file it was read from.
    pub file: PathBuf,
    /// What it asks for.
    pub deployment: Deployment,
}

/// The built-ins a device has once: one microphone, one connection, one page.
const ONCE_PER_DEVICE: [&str; 4] = ["recorder", "curator", "connect", "page"];

fn builtins_of(d: &Deployment) -> Vec<&'static str> {
    let s = &d.spec;
    let has = [
        s.recorder.is_some(),
        s.curates(),
        s.connect.is_some(),
        s.page.is_some(),
    ];
    (ONCE_PER_DEVICE.iter().zip(has))
        .filter_map(|(n, h)| h.then_some(*n))
        .collect()
}

/// The deployment that runs the device's shared components (reserved under `--dir`).
pub const SHARED: &str = "shared";

/// Why `d` (read from `file`, for the deployment `member` of the folder) cannot be in force
/// beside `others`: `Some((field, what to do))`. Checked on every valid read of the file.
pub fn veto(
    member: &str,
    d: &Deployment,
    others: &BTreeMap<String, InForce>,
) -> Option<(String, String)> {
    if member == SHARED {
        return Some((
            "metadata.name".into(),
            format!(
                "{SHARED:?} is the name of the device's shared components (shared: true); give this deployment another name"
            ),
        ));
    }
    if d.name().as_str() != member {
        return Some((
            "metadata.name".into(),
            format!(
                "this file held deployment {member:?} and now names {:?}; a new name is a new deployment: roost removes {member:?} after the grace and starts {:?}",
                d.name().as_str(),
                d.name().as_str()
            ),
        ));
    }
    for (name, o) in others.iter().filter(|(n, _)| n.as_str() != member) {
        let theirs = builtins_of(&o.deployment);
        if let Some(b) = builtins_of(d).into_iter().find(|b| theirs.contains(b)) {
            let field = if b == "curator" { "spec.detectors" } else { b };
            return Some((
                format!("spec.{}", field.trim_start_matches("spec.")),
                format!(
                    "deployment {name:?} ({}) already has the device's {b}; a device has one (one microphone, one link, one page): remove it here and add {name:?} to spec.dependsOn to use it (its spec.exports can give its storage folder)",
                    o.file.display()
                ),
            ));
        }
        let storage = |x: &Deployment| x.spec.storage.as_ref().and_then(|s| s.path.clone());
        if storage(d).is_some() && storage(d) == storage(&o.deployment) {
            return Some((
                "spec.storage.path".into(),
                format!(
                    "deployment {name:?} ({}) records into the same folder; give each deployment its own storage",
                    o.file.display()
                ),
            ));
        }
        if let Some(why) = shared_clash(d, &o.deployment, &o.file) {
            return Some(why);
        }
        if let Some(unit) = unit_clash(d, &o.deployment) {
            return Some((
                "spec.components".into(),
                format!(
                    "its component would run as {unit:?}, as one of deployment {name:?} ({}) does; rename the component or the deployment",
                    o.file.display()
                ),
            ));
        }
    }
    if let Some(why) = shared_dependency(d) {
        return Some(why);
    }
    cycle_through(member, d, others).map(|cycle| {
        (
            "spec.dependsOn".into(),
            format!(
                "dependsOn forms a cycle across deployments: {}; remove one of these dependencies",
                cycle.join(" -> ")
            ),
        )
    })
}

/// `d`'s `shared: true` components, with their index in `spec.components`.
fn shared_of(d: &Deployment) -> impl Iterator<Item = (usize, &crate::spec::ComponentSpec)> {
    (d.spec.components.iter().enumerate()).filter(|(_, c)| c.shared)
}

/// A shared component `d` declares as `other` does, but with another spec.
fn shared_clash(
    d: &Deployment,
    other: &Deployment,
    file: &std::path::Path,
) -> Option<(String, String)> {
    for (i, c) in shared_of(d) {
        let theirs = (other.spec.components.iter()).find(|o| o.shared && o.name == c.name);
        if theirs.is_some_and(|o| o != c) {
            return Some((
                format!("spec.components[{i}]"),
                format!(
                    "shared component {:?} differs from the one of deployment {:?} ({}); a shared component runs once, so every deployment must declare it identically",
                    c.name.as_str(),
                    other.name().as_str(),
                    file.display()
                ),
            ));
        }
    }
    None
}

/// A shared component that depends on one of this deployment's own (it runs apart from them).
fn shared_dependency(d: &Deployment) -> Option<(String, String)> {
    let shared = |n: &str| {
        d.spec
            .components
            .iter()
            .any(|c| c.shared && c.name.as_str() == n)
    };
    for (i, c) in shared_of(d) {
        if let Some(dep) = c.depends_on.iter().find(|n| !shared(n.as_str())) {
            return Some((
                format!("spec.components[{i}].dependsOn"),
                format!(
                    "shared component {:?} depends on {:?}, which is not shared; a shared component runs apart from any one deployment: depend on shared components only",
                    c.name.as_str(),
                    dep.as_str()
                ),
            ));
        }
    }
    None
}

/// Who declares each shared component, in the order they first did: `remembered` (across
/// restarts) keeps its order for those still declaring it; new ones follow in name order.
/// The first is its owner.
pub fn shared_users(
    in_force: &BTreeMap<String, InForce>,
    remembered: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let declares = |dep: &str, comp: &str| {
        in_force.get(dep).is_some_and(|o| {
            (o.deployment.spec.components.iter()).any(|c| c.shared && c.name.as_str() == comp)
        })
    };
    for (dep, o) in in_force {
        for c in o.deployment.spec.components.iter().filter(|c| c.shared) {
            users
                .entry(c.name.to_string())
                .or_default()
                .push(dep.clone());
        }
    }
    for (comp, list) in users.iter_mut() {
        let mut ordered: Vec<String> = (remembered.get(comp).into_iter().flatten())
            .filter(|d| declares(d, comp))
            .cloned()
            .collect();
        ordered.extend(
            list.iter()
                .filter(|d| !ordered.contains(d))
                .cloned()
                .collect::<Vec<_>>(),
        );
        *list = ordered;
    }
    users
}

/// The deployment `shared` that runs every shared component once: each as its owner declares
/// it, under its owner's restart policy. `None` when no deployment shares anything.
pub fn shared_deployment(
    in_force: &BTreeMap<String, InForce>,
    users: &BTreeMap<String, Vec<String>>,
) -> Option<Deployment> {
    let mut components = Vec::new();
    for (comp, list) in users {
        let Some(owner) = list.first().and_then(|o| in_force.get(o)) else {
            continue;
        };
        let spec = &owner.deployment.spec;
        if let Some(c) = spec.components.iter().find(|c| c.name.as_str() == comp) {
            let mut c = c.clone();
            c.restart_policy = Some(c.effective_restart_policy(spec.restart_policy));
            components.push(c);
        }
    }
    if components.is_empty() {
        return None;
    }
    Some(Deployment {
        api_version: crate::spec::ApiVersion::V1,
        kind: crate::spec::Kind::Deployment,
        metadata: crate::spec::Metadata {
            name: SHARED.try_into().ok()?,
        },
        spec: crate::spec::DeploymentSpec {
            components,
            ..Default::default()
        },
    })
}

/// A runtime name (`<deployment>-<component>`, as systemd units are named) both would use.
fn unit_clash(a: &Deployment, b: &Deployment) -> Option<String> {
    let names = |d: &Deployment| -> Vec<String> {
        d.component_names()
            .map(|c| format!("roost-{}-{c}.service", d.name().as_str()))
            .collect()
    };
    let theirs = names(b);
    names(a).into_iter().find(|n| theirs.contains(n))
}

/// The cycle `d`'s dependencies close through the deployments in force, as names from `d`.
fn cycle_through(
    member: &str,
    d: &Deployment,
    others: &BTreeMap<String, InForce>,
) -> Option<Vec<String>> {
    let deps: BTreeMap<String, Vec<String>> = (others.iter())
        .filter(|(n, _)| n.as_str() != member)
        .map(|(n, o)| (n.clone(), dependencies(&o.deployment)))
        .chain([(d.name().to_string(), dependencies(d))])
        .collect();
    let start = d.name().to_string();
    let mut path = vec![start.clone()];
    find_cycle(&start, &deps, &mut path).then_some(path)
}

fn dependencies(d: &Deployment) -> Vec<String> {
    d.spec.depends_on.iter().map(|n| n.to_string()).collect()
}

fn find_cycle(start: &str, deps: &BTreeMap<String, Vec<String>>, path: &mut Vec<String>) -> bool {
    let last = path.last().cloned().unwrap_or_default();
    for next in deps.get(&last).into_iter().flatten() {
        if next == start {
            path.push(next.clone());
            return true;
        }
        if path.contains(next) || path.len() > deps.len() {
            continue;
        }
        path.push(next.clone());
        if find_cycle(start, deps, path) {
            return true;
        }
        path.pop();
    }
    false
}

/// The deployments of `left` that no other of `left` depends on (nor uses as `shared`): they
/// stop first. Never empty while `left` is not (a cycle, which vetoes prevent, stops at once).
pub fn stop_wave(left: &[String], in_force: &BTreeMap<String, InForce>) -> Vec<String> {
    let needed = |name: &str| {
        left.iter().filter(|o| o.as_str() != name).any(|o| {
            in_force.get(o).is_some_and(|d| {
                let spec = &d.deployment.spec;
                spec.depends_on.iter().any(|n| n.as_str() == name)
                    || (name == SHARED && spec.components.iter().any(|c| c.shared))
            })
        })
    };
    let wave: Vec<String> = left.iter().filter(|n| !needed(n)).cloned().collect();
    if wave.is_empty() { left.to_vec() } else { wave }
}

/// What the device says to `d`: each dependency that is not Succeeded and Running holds it
/// back, and the exports of every dependency in force reach its components.
pub fn links_of(
    d: &Deployment,
    in_force: &BTreeMap<String, InForce>,
    docs: &BTreeMap<String, StatusDoc>,
    last_exports: &BTreeMap<String, BTreeMap<String, String>>,
) -> Links {
    let mut links = Links {
        borrowed: (d.spec.components.iter())
            .filter(|c| c.shared)
            .map(|c| c.name.to_string())
            .collect(),
        ..Links::default()
    };
    if !links.borrowed.is_empty() {
        links
            .holds
            .extend(shared_hold(&links.borrowed, docs.get(SHARED)));
    }
    for dep in &d.spec.depends_on {
        let Some(o) = in_force.get(dep.as_str()) else {
            // What it last offered stays bound: a dependent that runs is not restarted
            // without it while its dependency is gone.
            links
                .env
                .extend(last_exports.get(dep.as_str()).cloned().unwrap_or_default());
            links.holds.push(Hold::Missing {
                deployment: dep.to_string(),
            });
            continue;
        };
        links.env.extend(o.deployment.exported_env());
        if let Some(hold) = docs
            .get(dep.as_str())
            .and_then(|doc| hold_of(dep.as_str(), doc))
        {
            links.holds.push(hold);
        } else if !docs.contains_key(dep.as_str()) {
            links.holds.push(Hold::NotReady {
                deployment: dep.to_string(),
                state: "not started".into(),
            });
        }
    }
    links
}

/// What the shared components a deployment uses mean for it: running, or it waits (or is in
/// error while one of them is).
fn shared_hold(
    borrowed: &std::collections::BTreeSet<String>,
    doc: Option<&StatusDoc>,
) -> Option<Hold> {
    let not_ready = |state: String| {
        Some(Hold::NotReady {
            deployment: SHARED.to_string(),
            state,
        })
    };
    let Some(doc) = doc else {
        return not_ready("not started".into());
    };
    for name in borrowed {
        match doc.components.iter().find(|c| &c.name == name) {
            Some(c) if c.status == crate::status::ComponentState::Error => {
                return Some(Hold::InError {
                    deployment: SHARED.to_string(),
                    why: format!("shared component {name:?} is in error ({:?})", c.reason),
                });
            }
            Some(c) if c.status == crate::status::ComponentState::Running => {}
            _ => return not_ready(format!("shared component {name:?} is not running yet")),
        }
    }
    None
}

/// Whether `doc` (of deployment `name`) holds its dependents back, and how.
fn hold_of(name: &str, doc: &StatusDoc) -> Option<Hold> {
    let in_error = doc.status == OverallStatus::Error
        || matches!(
            doc.phase,
            Phase::FailedToStart | Phase::PartiallyDeprovisioned
        );
    if in_error {
        let why = (doc.errors.first())
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|| format!("status {:?}, phase {:?}", doc.status, doc.phase));
        return Some(Hold::InError {
            deployment: name.to_string(),
            why,
        });
    }
    let ready = doc.phase == Phase::Succeeded
        && doc.status == OverallStatus::Running
        && doc.observed_generation == doc.generation;
    // A built-in is healthy by its output: a recorder that has not yet written a file runs,
    // and is not yet what a dependent waits for.
    let starting = doc.components.iter().find(|c| {
        c.reason == Some(crate::status::Reason::Starting)
            || (c.name == crate::spec::recorder::RECORDER_COMPONENT
                && (c.output_as::<crate::recorder::RecorderOutput>())
                    .is_some_and(|o| o.state == crate::recorder::RecorderState::Starting))
    });
    match (ready, starting) {
        (true, None) => None,
        (true, Some(c)) => Some(Hold::NotReady {
            deployment: name.to_string(),
            state: format!("{} is starting (no output yet)", c.name),
        }),
        (false, _) => Some(Hold::NotReady {
            deployment: name.to_string(),
            state: format!("{:?}/{:?}", doc.phase, doc.status),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ErrorEntry, ReconcilerInfo};
    use std::path::Path;

    fn dep(name: &str, extra: &str) -> Deployment {
        let spec = if extra.is_empty() { " {}" } else { "" };
        let text = format!(
            "apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:{spec}\n{extra}"
        );
        crate::spec::parse_str(Path::new("/d/x.yaml"), &text).unwrap()
    }

    fn in_force(ds: &[Deployment]) -> BTreeMap<String, InForce> {
        (ds.iter())
            .map(|d| {
                let file = PathBuf::from(format!("/d/{}.yaml", d.name()));
                (
                    d.name().to_string(),
                    InForce {
                        file,
                        deployment: d.clone(),
                    },
                )
            })
            .collect()
    }

    fn doc(phase: Phase, status: OverallStatus, errors: &[&str]) -> StatusDoc {
        StatusDoc {
            api_version: "roost/v1".into(),
            kind: "DeploymentStatus".into(),
            deployment: Some("x".into()),
            generation: 2,
            observed_generation: 2,
            phase,
            status,
            spec_error: None,
            components: Vec::new(),
            errors: (errors.iter())
                .map(|c| ErrorEntry::new(crate::errors::lookup(c).unwrap(), None, "why"))
                .collect(),
            last_apply: None,
            reconciler: ReconcilerInfo {
                pid: 1,
                version: "0".into(),
                runtime: "process".into(),
            },
            updated_at: jiff::Timestamp::UNIX_EPOCH,
            file: None,
            deployments: Vec::new(),
            shared: Vec::new(),
            remote: None,
        }
    }

    const REC: &str = "  recorder: {device: hw:1}\n  storage: {path: /srv/a}\n";

    #[test]
    fn a_second_recorder_storage_or_unit_name_is_refused_naming_the_other_file() {
        let first = dep("rec", REC);
        let others = in_force(&[first]);
        let (field, why) = veto("rec2", &dep("rec2", REC), &others).unwrap();
        assert_eq!(field, "spec.recorder");
        assert!(
            why.contains("\"rec\" (/d/rec.yaml) already has the device's recorder"),
            "{why}"
        );
        let same_storage = "  storage: {path: /srv/a}\n";
        let (field, why) = veto("b", &dep("b", same_storage), &others).unwrap();
        assert_eq!(field, "spec.storage.path", "{why}");
        // roost-a-b-c.service from a + b-c and from a-b + c.
        let ab = dep(
            "a-b",
            "  components:\n    - {name: c, command: [/bin/true]}\n",
        );
        let a = dep(
            "a",
            "  components:\n    - {name: b-c, command: [/bin/true]}\n",
        );
        let (field, why) = veto("a", &a, &in_force(&[ab])).unwrap();
        assert_eq!(field, "spec.components");
        assert!(why.contains("roost-a-b-c.service"), "{why}");
        // Its own earlier self is no clash (the file edited).
        assert_eq!(veto("rec", &dep("rec", REC), &others), None);
    }

    #[test]
    fn a_cycle_across_three_files_is_named_by_the_file_that_closes_it() {
        let a = dep("a", "  dependsOn: [b]\n");
        let b = dep("b", "  dependsOn: [c]\n");
        let c = dep("c", "  dependsOn: [a]\n");
        let others = in_force(&[a, b]);
        let (field, why) = veto("c", &c, &others).unwrap();
        assert_eq!(field, "spec.dependsOn");
        assert!(why.contains("c -> a -> b -> c"), "{why}");
        // A chain, and a diamond, are no cycle.
        let d = dep("d", "  dependsOn: [a, b]\n");
        assert_eq!(veto("d", &d, &others), None);
    }

    #[test]
    fn an_export_name_no_environment_can_hold_is_refused_at_load() {
        let text = "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  exports: {port-no: \"1\"}\n";
        let e = crate::spec::parse_str(Path::new("/d/a.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid environment variable name \"port-no\""),
            "{e}"
        );
    }

    const BROKER: &str =
        "  components:\n    - {name: broker, command: [/bin/sleep, \"9\"], shared: true}\n";

    #[test]
    fn a_shared_components_owner_is_who_declared_it_first_not_the_file_order() {
        let (a, b, c) = (dep("a", BROKER), dep("b", BROKER), dep("c", BROKER));
        // First look: everyone new, in name order.
        let users = shared_users(&in_force(&[a.clone(), b.clone()]), &BTreeMap::new());
        assert_eq!(users["broker"], ["a", "b"]);
        // Remembered: c arrives, and after a restart (files read in any order) b still follows a.
        let remembered =
            BTreeMap::from([("broker".to_string(), vec!["b".to_string(), "a".to_string()])]);
        let users = shared_users(&in_force(&[a.clone(), b.clone(), c.clone()]), &remembered);
        assert_eq!(users["broker"], ["b", "a", "c"], "b declared it first");
        // The owner goes: the next user owns it, with its spec.
        let users = shared_users(&in_force(&[a.clone(), c.clone()]), &users);
        assert_eq!(users["broker"], ["a", "c"]);
        let run = shared_deployment(&in_force(&[a.clone(), c.clone()]), &users).unwrap();
        assert_eq!(run.name().as_str(), SHARED);
        assert_eq!(run.spec.components.len(), 1);
        assert_eq!(
            run.spec.components[0].restart_policy,
            Some(crate::spec::RestartPolicy::Always)
        );
        // Nobody shares anything: nothing runs.
        assert!(shared_deployment(&in_force(&[dep("d", "")]), &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_shared_component_that_differs_or_leans_on_a_private_one_is_refused() {
        let a = dep("a", BROKER);
        let other = dep(
            "b",
            "  components:\n    - {name: broker, command: [/bin/sleep, \"10\"], shared: true}\n",
        );
        let (field, why) = veto("b", &other, &in_force(std::slice::from_ref(&a))).unwrap();
        assert_eq!(field, "spec.components[0]");
        assert!(
            why.contains("differs from the one of deployment \"a\" (/d/a.yaml)"),
            "{why}"
        );
        let leaning = dep(
            "c",
            "  components:\n    - {name: db, command: [/bin/true]}\n    - {name: broker, command: [/bin/true], shared: true, dependsOn: [db]}\n",
        );
        let (field, _) = veto("c", &leaning, &BTreeMap::new()).unwrap();
        assert_eq!(field, "spec.components[1].dependsOn");
        let (field, _) = veto(SHARED, &dep(SHARED, ""), &BTreeMap::new()).unwrap();
        assert_eq!(field, "metadata.name", "the name shared is the device's");
    }

    #[test]
    fn dependents_stop_before_what_they_depend_on() {
        let rec = dep("rec", "");
        let up = dep("up", "  dependsOn: [rec]\n");
        let web = dep(
            "web",
            "  dependsOn: [up]\n  components:\n    - {name: b, command: [/bin/true], shared: true}\n",
        );
        let all = in_force(&[rec, up, web]);
        let mut left: Vec<String> = ["rec", "shared", "up", "web"].map(String::from).to_vec();
        let mut waves = Vec::new();
        while !left.is_empty() {
            let wave = stop_wave(&left, &all);
            left.retain(|n| !wave.contains(n));
            waves.push(wave);
        }
        assert_eq!(
            waves,
            [vec!["web"], vec!["shared", "up"], vec!["rec"]]
                .map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        );
    }

    #[test]
    fn a_file_that_renames_its_deployment_is_refused_by_its_old_deployment() {
        let (field, why) = veto("old", &dep("new", ""), &BTreeMap::new()).unwrap();
        assert_eq!(field, "metadata.name");
        assert!(why.contains("now names \"new\""), "{why}");
    }

    #[test]
    fn links_say_what_each_dependency_means() {
        let rec = dep(
            "rec-site",
            "  exports: {RECORDINGS: /srv/a/recordings, port_no: \"1\"}\n",
        );
        let up = dep("up", "  dependsOn: [rec-site, nobody]\n");
        let all = in_force(&[rec.clone(), up.clone()]);
        let table: [(Option<StatusDoc>, Option<&str>); 6] = [
            (None, Some("NotReady")),
            (
                Some(doc(Phase::Succeeded, OverallStatus::Running, &[])),
                None,
            ),
            (
                Some(doc(Phase::Provisioning, OverallStatus::Pending, &[])),
                Some("NotReady"),
            ),
            (
                Some(doc(Phase::Succeeded, OverallStatus::Error, &["DEP_E311"])),
                Some("InError"),
            ),
            (
                Some(doc(Phase::FailedToStart, OverallStatus::Error, &[])),
                Some("InError"),
            ),
            (
                Some(doc(Phase::Stopped, OverallStatus::Stopped, &[])),
                Some("NotReady"),
            ),
        ];
        for (rec_doc, want) in table {
            let docs: BTreeMap<String, StatusDoc> = rec_doc
                .clone()
                .map(|d| ("rec-site".to_string(), d))
                .into_iter()
                .collect();
            let links = links_of(&up, &all, &docs, &BTreeMap::new());
            let missing = Hold::Missing {
                deployment: "nobody".into(),
            };
            assert_eq!(links.holds.last(), Some(&missing));
            let got = (links.holds.iter().find(|h| **h != missing)).map(|h| match h {
                Hold::NotReady { .. } => "NotReady",
                Hold::InError { .. } => "InError",
                Hold::Missing { .. } => "Missing",
            });
            assert_eq!(got, want, "{rec_doc:?}");
            assert_eq!(
                links.env.get("REC_SITE_RECORDINGS").map(String::as_str),
                Some("/srv/a/recordings")
            );
            assert_eq!(
                links.env.get("REC_SITE_PORT_NO").map(String::as_str),
                Some("1")
            );
        }
        let with_why = links_of(
            &up,
            &all,
            &BTreeMap::from([(
                "rec-site".to_string(),
                doc(Phase::Succeeded, OverallStatus::Error, &["DEP_E311"]),
            )]),
            &BTreeMap::new(),
        );
        // A dependency gone: its last exports stay bound (no restart of what runs).
        let gone = in_force(std::slice::from_ref(&up));
        let last = BTreeMap::from([("rec-site".to_string(), rec.exported_env())]);
        let kept = links_of(&up, &gone, &BTreeMap::new(), &last);
        assert_eq!(kept.env, rec.exported_env());
        assert!(matches!(kept.holds[0], Hold::Missing { .. }));
        assert!(
            matches!(&with_why.holds[0], Hold::InError { why, .. } if why.starts_with("DEP_E311"))
        );
        // A stale document (a newer generation not yet observed) is not ready either.
        let mut stale = doc(Phase::Succeeded, OverallStatus::Running, &[]);
        stale.generation = 3;
        let links = links_of(
            &up,
            &all,
            &BTreeMap::from([("rec-site".to_string(), stale)]),
            &BTreeMap::new(),
        );
        assert!(matches!(links.holds[0], Hold::NotReady { .. }));
        assert!(
            links_of(&rec, &all, &BTreeMap::new(), &BTreeMap::new())
                .holds
                .is_empty()
        );
    }
}
