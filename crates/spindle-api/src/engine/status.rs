//! The run and step state machines: named states and the transitions allowed.

/// Where a workflow run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Stored, steps not yet started.
    Pending,
    /// Steps are being run.
    Running,
    /// Every node is done or skipped; the output is set.
    Completed,
    /// A node failed with `on_error: fail`.
    Failed,
    /// Stopped by a user.
    Cancelled,
}

impl RunStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Reads a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether nothing more happens to the run unless a user retries it.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether a run in this state may move to `next`: it finishes once, and
    /// only a failed or cancelled run may run again (a retry).
    pub fn can_become(self, next: Self) -> bool {
        use RunStatus::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending | Running, Completed | Failed | Cancelled)
                | (Failed | Cancelled, Running)
        )
    }
}

/// Where one step (one node of one run) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Ready, waiting for an invocation to claim it.
    Queued,
    /// Claimed under a lease by one invocation.
    Running,
    /// A `wait` node parked until its signal or its timeout.
    Waiting,
    /// Its output is stored: final, never run again.
    Completed,
    /// It failed: its run failed with it (`on_error: fail`), or went on
    /// past it (`continue`, `route`: the step's failure is handled).
    Failed,
    /// Not run: no input edge was taken.
    Skipped,
}

impl StepStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Reads a stored status.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Waiting,
            Self::Completed,
            Self::Failed,
            Self::Skipped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether a step in this state may move to `next`. A running step whose
    /// lease expired goes back through `Running` (a new claim), never back to
    /// `Queued`; a finished step never changes.
    pub fn can_become(self, next: Self) -> bool {
        use StepStatus::*;
        matches!(
            (self, next),
            (Queued | Waiting, Running) | (Running, Running | Completed | Failed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_runs_and_steps_never_change() {
        for done in [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ] {
            assert!(done.is_terminal());
            for next in [RunStatus::Pending, RunStatus::Completed, RunStatus::Failed] {
                assert!(!done.can_become(next), "{done:?} -> {next:?}");
            }
        }
        assert!(!RunStatus::Completed.can_become(RunStatus::Running));
        for done in [
            StepStatus::Completed,
            StepStatus::Failed,
            StepStatus::Skipped,
        ] {
            for next in [
                StepStatus::Queued,
                StepStatus::Running,
                StepStatus::Completed,
            ] {
                assert!(!done.can_become(next), "{done:?} -> {next:?}");
            }
        }
    }

    #[test]
    fn only_failed_or_cancelled_runs_are_retried() {
        assert!(RunStatus::Failed.can_become(RunStatus::Running));
        assert!(RunStatus::Cancelled.can_become(RunStatus::Running));
        assert!(!RunStatus::Running.can_become(RunStatus::Pending));
    }

    #[test]
    fn a_step_is_claimed_then_finished() {
        assert!(StepStatus::Queued.can_become(StepStatus::Running));
        assert!(StepStatus::Running.can_become(StepStatus::Completed));
        assert!(!StepStatus::Queued.can_become(StepStatus::Completed));
        assert!(!StepStatus::Running.can_become(StepStatus::Queued));
    }

    #[test]
    fn names_round_trip() {
        for s in ["pending", "running", "completed", "failed", "cancelled"] {
            assert_eq!(RunStatus::parse(s).unwrap().as_str(), s);
        }
        for s in [
            "queued",
            "running",
            "waiting",
            "completed",
            "failed",
            "skipped",
        ] {
            assert_eq!(StepStatus::parse(s).unwrap().as_str(), s);
        }
    }
}
