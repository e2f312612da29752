//! Planning cost: `cargo bench --bench plan` prints the time to plan 1,000 components.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use roost::history::History;
use roost::plan::{Desired, PlanInput, plan};
use roost::runtime::{Observation, ObservedComponent, ObservedState};

fn main() {
    let n = 1000;
    let mut yaml = String::from(
        "apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: bench}\nspec:\n  components:\n",
    );
    for i in 0..n {
        let dep = if i > 0 {
            format!(", dependsOn: [c{}]", i - 1)
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "    - {{name: c{i}, command: [/bin/sleep, \"1000\"]{dep}}}\n"
        ));
    }
    let d = roost::spec::parse_str(std::path::Path::new("bench.yaml"), &yaml).unwrap();
    let desired = Desired::from_deployment(&d, Vec::new());
    let now = jiff::Timestamp::now();
    let observed: Observation = desired
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let obs = ObservedComponent {
                state: ObservedState::Running {
                    pid: Some(1000 + i as u32),
                    since: now,
                },
                spec_hash: Some(c.run.spec_hash.clone()),
                runtime_restarts: 0,
                stop_timeout: None,
            };
            (c.run.name.to_string(), obs)
        })
        .collect();
    let history = History::default();
    let stop_failures = BTreeMap::new();
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let p = plan(&PlanInput {
            desired: &desired,
            observed: &observed,
            history: &history,
            stop_failures: &stop_failures,
            runtime_restarts_itself: false,
            builtins: &Default::default(),
            now,
        });
        times.push(t.elapsed());
        assert!(p.actions.is_empty());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p) as usize];
    println!(
        "plan {n} components (all running, chain of dependsOn): median {:?}, p99 {:?}",
        pct(0.5),
        pct(0.99)
    );
    let t = Instant::now();
    let _ = roost::spec::parse_str(std::path::Path::new("bench.yaml"), &yaml).unwrap();
    println!(
        "parse+validate the {n}-component file ({} KiB): {:?}",
        yaml.len() / 1024,
        t.elapsed()
    );
    let _ = Duration::ZERO;
}
