//! The device's status document under `roost run --dir`: one entry per deployment (its own
//! document and file) and, in the fields a single deployment uses, the device's summary: the
//! worst deployment's phase and status, every component and error tagged with its deployment,
//! generations summed, the first refusal as `specError`. Pure.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::status::{
    ErrorEntry, OverallStatus, Phase, ReconcilerInfo, SharedComponent, SpecError, StatusDoc,
};

/// The entry of a deployment whose loop has not said anything yet: InProgress, Pending.
fn not_yet(name: &str, now: Timestamp) -> StatusDoc {
    StatusDoc::build(crate::status::StatusInputs {
        deployment: Some(name.to_string()),
        generation: 0,
        observed_generation: 0,
        spec_error: None,
        runtime_error: None,
        planned: Some((Phase::InProgress, &[], &[])),
        last: None,
        has_desired: false,
        last_apply: None,
        runtime: "",
        now,
    })
}

/// How bad a status is, for "the worst deployment".
fn badness(s: OverallStatus) -> u8 {
    match s {
        OverallStatus::Running => 0,
        OverallStatus::Stopped => 1,
        OverallStatus::Pending => 2,
        OverallStatus::Unknown => 3,
        OverallStatus::Error => 4,
    }
}

/// The device's document from each deployment's last one (`docs`, by name), their files, the
/// folder's files no deployment takes (`refusals`) and who declares each shared component
/// (`shared`, first declarer first). A user of a shared component lists it among its own
/// (with `deployment: shared`).
pub fn device_doc(
    docs: &BTreeMap<String, StatusDoc>,
    files: &BTreeMap<String, String>,
    refusals: &[SpecError],
    shared: &BTreeMap<String, Vec<String>>,
    now: Timestamp,
) -> StatusDoc {
    let shared_doc = docs.get(super::graph::SHARED);
    // A deployment whose loop has said nothing yet is Pending, never left out (the device
    // would look greener without it).
    let placeholders: BTreeMap<String, StatusDoc> = (files.keys())
        .filter(|n| !docs.contains_key(*n))
        .map(|n| (n.clone(), not_yet(n, now)))
        .collect();
    let all: BTreeMap<&String, &StatusDoc> = docs.iter().chain(placeholders.iter()).collect();
    let entries: Vec<StatusDoc> = (all.iter())
        .map(|(name, d)| {
            let mut d = (*d).clone();
            d.file = files.get(*name).cloned();
            let borrowed = (shared.iter()).filter(|(_, users)| users.contains(*name));
            for (comp, _) in borrowed {
                let run = shared_doc.and_then(|s| s.component(comp)).cloned();
                d.components.extend(run.map(|mut c| {
                    c.deployment = Some(super::graph::SHARED.to_string());
                    c
                }));
            }
            d
        })
        .collect();
    let worst = entries.iter().max_by_key(|d| badness(d.status));
    let mut errors: Vec<ErrorEntry> = (refusals.iter())
        .map(|r| {
            ErrorEntry::new(
                &crate::errors::INVALID_SPEC,
                None,
                crate::redact::text(&r.message),
            )
        })
        .collect();
    let mut components = Vec::new();
    for d in &entries {
        let name = d.deployment.clone();
        errors.extend(d.errors.iter().cloned().map(|mut e| {
            e.deployment = name.clone();
            e
        }));
        // A shared component is listed once, under `shared`.
        components.extend(
            d.components
                .iter()
                .filter(|c| c.deployment.is_none())
                .cloned()
                .map(|mut c| {
                    c.deployment = name.clone();
                    c
                }),
        );
    }
    let (phase, mut status) = match worst {
        Some(w) => (w.phase, w.status),
        None => (Phase::Stopped, OverallStatus::Stopped),
    };
    // Refusals are the folder's own words about a file (it may quote a line): redacted here;
    // the deployments' documents were redacted when they arrived.
    let spec_error = (refusals.first().map(crate::redact::typed))
        .or_else(|| entries.iter().find_map(|d| d.spec_error.clone()));
    if spec_error.is_some() && status == OverallStatus::Running {
        // A refused file is news the pusher must get, whatever runs.
        status = OverallStatus::Error;
    }
    StatusDoc {
        api_version: crate::spec::API_VERSION.to_string(),
        kind: "DeploymentStatus".to_string(),
        deployment: (!entries.is_empty()).then(|| {
            all.keys()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }),
        generation: entries.iter().map(|d| d.generation).sum(),
        observed_generation: entries.iter().map(|d| d.observed_generation).sum(),
        phase,
        status,
        spec_error,
        components,
        errors,
        last_apply: None,
        reconciler: ReconcilerInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            runtime: entries
                .first()
                .map(|d| d.reconciler.runtime.clone())
                .unwrap_or_default(),
        },
        updated_at: now,
        file: None,
        remote: None,
        deployments: entries,
        shared: (shared.iter())
            .filter_map(|(name, users)| {
                Some(SharedComponent {
                    name: name.clone(),
                    owner: users.first()?.clone(),
                    users: users.clone(),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ComponentState, ComponentStatus};

    fn doc(name: &str, status: OverallStatus, phase: Phase, generation: u64) -> StatusDoc {
        let mut d = crate::status::StatusDoc::build(crate::status::StatusInputs {
            deployment: Some(name.into()),
            generation,
            observed_generation: generation,
            spec_error: None,
            runtime_error: None,
            planned: Some((phase, &[], &[])),
            last: None,
            has_desired: true,
            last_apply: None,
            runtime: "process",
            now: Timestamp::UNIX_EPOCH,
        });
        d.status = status;
        d.components.push(ComponentStatus {
            name: "c".into(),
            status: ComponentState::Running,
            reason: None,
            restart_count: 0,
            exit_code: None,
            pid: Some(1),
            since: None,
            output: None,
            deployment: None,
        });
        d
    }

    #[test]
    fn the_device_is_its_worst_deployment_and_tags_what_is_whose() {
        let docs = BTreeMap::from([
            (
                "a".to_string(),
                doc("a", OverallStatus::Running, Phase::Succeeded, 2),
            ),
            (
                "b".to_string(),
                doc("b", OverallStatus::Pending, Phase::Provisioning, 3),
            ),
            (
                "c".to_string(),
                doc("c", OverallStatus::Error, Phase::FailedToStart, 1),
            ),
        ]);
        let files = BTreeMap::from([("a".to_string(), "/d/a.yaml".to_string())]);
        let d = device_doc(&docs, &files, &[], &BTreeMap::new(), Timestamp::UNIX_EPOCH);
        assert_eq!(
            (d.status, d.phase),
            (OverallStatus::Error, Phase::FailedToStart)
        );
        assert_eq!((d.generation, d.observed_generation), (6, 6));
        assert_eq!(d.deployment.as_deref(), Some("a, b, c"));
        assert_eq!(d.deployments.len(), 3);
        assert_eq!(d.deployments[0].file.as_deref(), Some("/d/a.yaml"));
        let owners: Vec<_> = d
            .components
            .iter()
            .map(|c| c.deployment.as_deref())
            .collect();
        assert_eq!(owners, [Some("a"), Some("b"), Some("c")]);
        // Nothing worse than Pending: Pending; nothing at all: Stopped.
        let calm = BTreeMap::from([
            (
                "a".to_string(),
                doc("a", OverallStatus::Running, Phase::Succeeded, 1),
            ),
            (
                "b".to_string(),
                doc("b", OverallStatus::Pending, Phase::Provisioning, 1),
            ),
        ]);
        let d = device_doc(&calm, &files, &[], &BTreeMap::new(), Timestamp::UNIX_EPOCH);
        assert_eq!(d.status, OverallStatus::Pending);
        let none = device_doc(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &[],
            &BTreeMap::new(),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            (none.status, none.deployment),
            (OverallStatus::Stopped, None)
        );
    }

    #[test]
    fn a_deployment_that_has_said_nothing_yet_is_pending_never_left_out() {
        let docs = BTreeMap::from([(
            "a".to_string(),
            doc("a", OverallStatus::Running, Phase::Succeeded, 1),
        )]);
        let files = BTreeMap::from([
            ("a".to_string(), "/d/a.yaml".to_string()),
            ("z".to_string(), "/d/z.yaml".to_string()),
        ]);
        let d = device_doc(&docs, &files, &[], &BTreeMap::new(), Timestamp::UNIX_EPOCH);
        assert_eq!(d.deployments.len(), 2);
        assert_eq!(d.deployments[1].deployment.as_deref(), Some("z"));
        assert_eq!(d.deployments[1].status, OverallStatus::Pending);
        assert_eq!(
            d.status,
            OverallStatus::Pending,
            "not Running while z is unknown"
        );
    }

    #[test]
    fn a_refused_file_is_news_and_no_secret_of_it_is_written() {
        let docs = BTreeMap::from([(
            "a".to_string(),
            doc("a", OverallStatus::Running, Phase::Succeeded, 1),
        )]);
        let refusal = SpecError {
            code: "DEP_E162".into(),
            message: "/d/b.yaml:3:1: bad line: password=hunter22".into(),
            file: "/d/b.yaml".into(),
            line: Some(3),
            column: Some(1),
            field: None,
        };
        let d = device_doc(
            &docs,
            &BTreeMap::new(),
            &[refusal],
            &BTreeMap::new(),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(
            d.status,
            OverallStatus::Error,
            "a refused file makes a Running device Error"
        );
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("hunter22"), "{text}");
        assert!(d.spec_error.unwrap().message.contains("<redacted>"));
    }
}
