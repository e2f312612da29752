use super::*;
use serde_json::json;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("d{i:02}")).collect()
}

#[test]
fn batches_are_cumulative_and_the_last_reaches_every_device() {
    let sizes: Vec<BatchSize> = ["1", "10%", "100%"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let lens = |n: usize, sizes: &[BatchSize]| -> Vec<usize> {
        plan_batches(&names(n), sizes)
            .iter()
            .map(Vec::len)
            .collect()
    };
    assert_eq!(lens(20, &sizes), vec![1, 1, 18]);
    assert_eq!(lens(40, &sizes), vec![1, 3, 36]);
    assert_eq!(lens(1, &sizes), vec![1]);
    assert_eq!(lens(5, &[BatchSize::Count(2)]), vec![2, 3]);
    assert_eq!(lens(3, &[BatchSize::Count(10)]), vec![3]);
    let all: Vec<String> = plan_batches(&names(7), &sizes).concat();
    assert_eq!(all, names(7));
    for bad in ["0", "0%", "101%", "x", "-1", ""] {
        assert!(bad.parse::<BatchSize>().is_err(), "{bad}");
    }
}

#[test]
fn a_devices_report_gives_its_verdict_on_the_version() {
    let cases = [
        (json!({"state": "gating", "appliedVersion": 7}), None),
        (json!({"state": "waiting", "desiredVersion": 7}), None),
        (
            json!({"state": "passed", "appliedVersion": 7}),
            Some("passed"),
        ),
        (json!({"state": "passed", "appliedVersion": 6}), None),
        (
            json!({"state": "reverted", "appliedVersion": 6,
                   "reverted": {"version": 7, "codes": ["DEP_E301"], "reason": "worse"}}),
            Some("reverted by its health gate (DEP_E301): worse"),
        ),
        // An older revert says nothing about this version.
        (
            json!({"state": "passed", "appliedVersion": 7, "reverted": {"version": 5, "codes": []}}),
            Some("passed"),
        ),
        (
            json!({"state": "refused", "refused": {"version": 7, "code": "DEP_E806", "reason": "bad"}}),
            Some("refused DEP_E806: bad"),
        ),
        (
            json!({"state": "refused", "refused": {"code": "DEP_E801", "reason": "x"}}),
            None,
        ),
    ];
    for (report, want) in cases {
        let got = outcome_of(&report, 7).map(|o| match o {
            DeviceOutcome::Passed => "passed".to_string(),
            DeviceOutcome::Failed { reason, .. } => reason,
            other => format!("{other:?}"),
        });
        assert_eq!(got.as_deref(), want, "{report}");
    }
}

#[test]
fn versions_and_labels_come_from_the_reports() {
    let reports = BTreeMap::from([
        (
            "a".to_string(),
            json!({"highestVersion": 4, "labels": {"site": "north"}}),
        ),
        (
            "b".to_string(),
            json!({"highestVersion": 9, "labels": {"site": "south"}}),
        ),
        ("c".to_string(), json!({"labels": {"site": "north"}})),
    ]);
    assert_eq!(next_version(reports.values()), Some(10));
    assert_eq!(next_version(std::iter::empty()), Some(1));
    let at_the_top = json!({"highestVersion": u64::MAX});
    assert_eq!(next_version(std::iter::once(&at_the_top)), None);
    assert_eq!(select(&reports, "site", "north"), vec!["a", "c"]);
    assert!(select(&reports, "site", "east").is_empty());
}
