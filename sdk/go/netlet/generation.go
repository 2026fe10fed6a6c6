package netlet

import (
	"fmt"

	"google.golang.org/grpc/codes"
)

// Applied is the (epoch, generation) of the ProgramService or ApplyPolicy batch a receiver
// applied last; the zero value is "nothing yet".
type Applied struct {
	Epoch      uint64
	Generation uint64
}

// Check decides what to do with a batch, by the rules written in services.proto: apply (true),
// replay (false: answer OK with the applied generation, change nothing), or a
// FAILED_PRECONDITION naming the field at fault (change nothing; the sender sends a full sync).
func (a Applied) Check(epoch, generation uint64, fullSync bool) (bool, error) {
	empty := a.Generation == 0
	if empty || epoch != a.Epoch {
		switch {
		case fullSync:
			return true, nil
		case empty:
			return false, FieldError(codes.FailedPrecondition, "full_sync",
				"nothing applied yet; the first batch must be a full sync", "FULL_SYNC_REQUIRED")
		default:
			return false, FieldError(codes.FailedPrecondition, "epoch",
				fmt.Sprintf("a delta from epoch %d on top of epoch %d; send a full sync", epoch, a.Epoch),
				"EPOCH_MISMATCH")
		}
	}
	if generation == a.Generation {
		return false, nil
	}
	if generation < a.Generation {
		return false, FieldError(codes.FailedPrecondition, "generation",
			fmt.Sprintf("%d is older than the applied generation %d of epoch %d", generation, a.Generation, a.Epoch),
			"GENERATION_STALE")
	}
	return true, nil
}
