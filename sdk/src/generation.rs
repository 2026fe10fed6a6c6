//! Generations with epochs: what a receiver of ProgramService / ApplyPolicy batches does with a
//! batch, given what it applied last (the rules written in `services.proto`).
//!
//! A sender (the host, or a caller of the host socket) stamps each batch with its epoch, a
//! number it picks anew at every start, and a generation that grows while it runs. Epochs are
//! compared for equality only: a sender that restarted begins its numbering again, and its
//! first batch, a full sync, must apply whatever its generation.

use tonic::Status;

use crate::status::field_error;

/// The (epoch, generation) of the batch a receiver applied last; the default is "nothing yet".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The sender's epoch.
    pub epoch: u64,
    /// The generation within that epoch; 0 while nothing is applied.
    pub generation: u64,
}

/// The stamp of an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// The sender's epoch.
    pub epoch: u64,
    /// The batch's generation (> 0, validated before).
    pub generation: u64,
    /// Whether the batch is the complete desired state.
    pub full_sync: bool,
}

impl Applied {
    /// Whether anything was applied.
    pub fn is_empty(&self) -> bool {
        self.generation == 0
    }

    /// Decides what to do with `batch`: `Ok(true)` apply it (then record [`Applied::after`]),
    /// `Ok(false)` it is a replay (answer OK with the applied generation, change nothing), or
    /// `FAILED_PRECONDITION` naming the field at fault (nothing changes; the sender answers it
    /// with a full sync).
    pub fn check(&self, batch: Batch) -> Result<bool, Status> {
        let same_epoch = !self.is_empty() && batch.epoch == self.epoch;
        if !same_epoch {
            if batch.full_sync {
                return Ok(true);
            }
            if self.is_empty() {
                return Err(field_error(
                    tonic::Code::FailedPrecondition,
                    "full_sync",
                    "nothing applied yet; the first batch must be a full sync",
                    "FULL_SYNC_REQUIRED",
                ));
            }
            return Err(field_error(
                tonic::Code::FailedPrecondition,
                "epoch",
                format!(
                    "a delta from epoch {} on top of epoch {}; send a full sync",
                    batch.epoch, self.epoch
                ),
                "EPOCH_MISMATCH",
            ));
        }
        if batch.generation == self.generation {
            return Ok(false);
        }
        if batch.generation < self.generation {
            return Err(field_error(
                tonic::Code::FailedPrecondition,
                "generation",
                format!(
                    "{} is older than the applied generation {} of epoch {}",
                    batch.generation, self.generation, self.epoch
                ),
                "GENERATION_STALE",
            ));
        }
        Ok(true)
    }

    /// What is applied once `batch` is.
    pub fn after(batch: Batch) -> Self {
        Self {
            epoch: batch.epoch,
            generation: batch.generation,
        }
    }
}

impl From<&crate::proto::ProgramServiceRequest> for Batch {
    fn from(r: &crate::proto::ProgramServiceRequest) -> Self {
        Self {
            epoch: r.epoch,
            generation: r.generation,
            full_sync: r.full_sync,
        }
    }
}

impl From<&crate::proto::ApplyPolicyRequest> for Batch {
    fn from(r: &crate::proto::ApplyPolicyRequest) -> Self {
        Self {
            epoch: r.epoch,
            generation: r.generation,
            full_sync: r.full_sync,
        }
    }
}

impl From<Applied> for crate::proto::ProgramServiceResponse {
    fn from(a: Applied) -> Self {
        Self {
            applied_generation: a.generation,
            applied_epoch: a.epoch,
        }
    }
}

impl From<Applied> for crate::proto::ApplyPolicyResponse {
    fn from(a: Applied) -> Self {
        Self {
            applied_generation: a.generation,
            applied_epoch: a.epoch,
        }
    }
}

/// A fresh epoch for a sender starting now: the wall clock in nanoseconds, so two incarnations
/// of one sender practically never share one (only equality matters; never 0).
pub fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn b(epoch: u64, generation: u64, full_sync: bool) -> Batch {
        Batch {
            epoch,
            generation,
            full_sync,
        }
    }

    // The table of rules in services.proto, row by row, as a model independent of the code.
    #[test]
    fn the_contracts_rules() {
        let none = Applied::default();
        let at = Applied {
            epoch: 7,
            generation: 10,
        };
        let field = |r: Result<bool, Status>| {
            let s = r.unwrap_err();
            assert_eq!(s.code(), Code::FailedPrecondition);
            s.message()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        // 1. a full sync from another epoch, or onto nothing, applies whatever its number.
        assert_eq!(none.check(b(0, 1, true)).ok(), Some(true));
        assert_eq!(at.check(b(8, 1, true)).ok(), Some(true));
        assert_eq!(at.check(b(8, 10, true)).ok(), Some(true));
        assert_eq!(at.check(b(0, 99, true)).ok(), Some(true));
        // 2. same epoch, same generation: a replay.
        assert_eq!(at.check(b(7, 10, false)).ok(), Some(false));
        assert_eq!(at.check(b(7, 10, true)).ok(), Some(false));
        // 3. same epoch, older: refused, a full sync too.
        assert_eq!(field(at.check(b(7, 9, false))), "generation");
        assert_eq!(field(at.check(b(7, 9, true))), "generation");
        // 4. a delta from elsewhere or onto nothing.
        assert_eq!(field(at.check(b(8, 11, false))), "epoch");
        assert_eq!(field(none.check(b(7, 1, false))), "full_sync");
        // 5. otherwise applied.
        assert_eq!(at.check(b(7, 11, false)).ok(), Some(true));
        assert_eq!(at.check(b(7, 12, true)).ok(), Some(true));
    }
}
