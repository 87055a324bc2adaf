//! Plan, then execute. Every phase first turns its inputs and the facts of the machine into plain
//! data, a list of steps of that phase's own closed enum, validated whole and printable
//! (`--dry-run`, `--json`) before anything is touched. Executing walks the list: each step is
//! probed read-only first (already done? then it is skipped, so a rerun picks up where a broken
//! run stopped), then executed, in a `tracing` span of its own; an error names the step.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One step of a phase. Implemented by each phase's closed enum of steps, so that a `match` in
/// one place shows everything the phase can do.
pub trait Step: Serialize {
    /// What probing and executing act on: the machine, a store root, ...
    type Env;
    type Error: std::error::Error + Send + Sync + 'static;

    /// One line for a person: what the step does, naming its device, path or store path.
    fn describe(&self) -> String;

    /// Whether the step's effect is already there. Must not change anything.
    fn probe(&self, env: &Self::Env) -> Result<Probe, Self::Error>;

    fn execute(&self, env: &mut Self::Env) -> Result<(), Self::Error>;
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// The step's effect is in place: skip it.
    Done,
    /// The step must run.
    Needed,
}

/// A step that failed, named as the plan printed it.
#[derive(Debug, thiserror::Error)]
#[error("step {number} ({description}): {source}")]
pub struct StepError<E: std::error::Error + 'static> {
    /// 1-based position in the plan.
    pub number: usize,
    pub description: String,
    #[source]
    pub source: E,
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub description: String,
    pub outcome: Outcome,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ran,
    Skipped,
}

impl fmt::Display for StepRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            Outcome::Ran => write!(f, "{} ({:.1} s)", self.description, self.seconds),
            Outcome::Skipped => write!(f, "{} (already done)", self.description),
        }
    }
}

/// Executes `steps` in order: probe, then execute what is needed. `on_step` hears of each step as
/// it ends (for progress). Stops at the first failure.
pub fn execute<S: Step>(
    steps: &[S],
    env: &mut S::Env,
    mut on_step: impl FnMut(&StepRecord),
) -> Result<Vec<StepRecord>, StepError<S::Error>> {
    let mut records = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let description = step.describe();
        let span = tracing::info_span!("step", number = i + 1, step = %description);
        let _entered = span.enter();
        let started = Instant::now();
        let fail = |source| StepError {
            number: i + 1,
            description: description.clone(),
            source,
        };
        let outcome = match step.probe(env).map_err(fail)? {
            Probe::Done => Outcome::Skipped,
            Probe::Needed => {
                step.execute(env).map_err(fail)?;
                Outcome::Ran
            }
        };
        let record = StepRecord {
            description,
            outcome,
            seconds: seconds(started.elapsed()),
        };
        on_step(&record);
        records.push(record);
    }
    Ok(records)
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step over a list of flags: done when its flag is set; executing sets it, or fails.
    #[derive(Serialize)]
    struct SetFlag(usize, bool);

    #[derive(Debug, thiserror::Error)]
    #[error("flag {0} would not set")]
    struct Refused(usize);

    impl Step for SetFlag {
        type Env = Vec<bool>;
        type Error = Refused;
        fn describe(&self) -> String {
            format!("set flag {}", self.0)
        }
        fn probe(&self, env: &Vec<bool>) -> Result<Probe, Refused> {
            Ok(if env[self.0] {
                Probe::Done
            } else {
                Probe::Needed
            })
        }
        fn execute(&self, env: &mut Vec<bool>) -> Result<(), Refused> {
            if !self.1 {
                return Err(Refused(self.0));
            }
            env[self.0] = true;
            Ok(())
        }
    }

    #[test]
    fn done_steps_are_skipped_and_a_failure_names_its_step() {
        let mut env = vec![true, false, false];
        let steps = [SetFlag(0, true), SetFlag(1, true), SetFlag(2, false)];
        let mut seen = Vec::new();
        let err = execute(&steps, &mut env, |r| seen.push(r.outcome)).unwrap_err();
        assert_eq!(seen, [Outcome::Skipped, Outcome::Ran]);
        assert_eq!(err.number, 3);
        assert_eq!(err.to_string(), "step 3 (set flag 2): flag 2 would not set");
        assert_eq!(env, [true, true, false]);
        // A rerun after the cause is gone skips what the first run did.
        let steps = [SetFlag(0, true), SetFlag(1, true), SetFlag(2, true)];
        let records = execute(&steps, &mut env, |_| {}).unwrap();
        let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [Outcome::Skipped, Outcome::Skipped, Outcome::Ran]);
    }
}
