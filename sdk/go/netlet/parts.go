package netlet

import (
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Batch is a ProgramServiceRequest or an ApplyPolicyRequest.
type Batch interface {
	proto.Message
	GetEpoch() uint64
	GetGeneration() uint64
	GetFullSync() bool
	GetFullSyncContinues() bool
	GetFullSyncPart() uint32
}

// Parts keeps the parts of a full sync sent in parts (a full sync over 4 MiB; see
// ProgramServiceRequest.full_sync_continues) until the last, then gives them as one batch.
type Parts[T Batch] struct {
	kept  T
	has   bool
	count uint32
}

// Offer takes a batch. It returns the batch to check and apply now (a batch sent whole, or
// the parts put together at the last) and true; or false when the batch is a part to keep
// (answer OK with the generation applied before); or FAILED_PRECONDITION naming
// full_sync_part when parts are missing. A batch of another epoch or generation drops the
// parts kept.
func (p *Parts[T]) Offer(req T) (T, bool, error) {
	var zero T
	if p.has && (p.kept.GetEpoch() != req.GetEpoch() || p.kept.GetGeneration() != req.GetGeneration()) {
		p.has, p.count = false, 0
	}
	index := uint32(0)
	if req.GetFullSync() {
		index = req.GetFullSyncPart()
	}
	if index != p.count {
		kept := p.count
		p.has, p.count = false, 0
		return zero, false, FieldError(codes.FailedPrecondition, "full_sync_part",
			fmt.Sprintf("part %d of the full sync of generation %d follows %d parts kept; send the full sync again",
				index, req.GetGeneration(), kept), "FULL_SYNC_PART_MISSING")
	}
	if req.GetFullSync() && req.GetFullSyncContinues() {
		if p.has {
			proto.Merge(p.kept, req)
		} else {
			p.kept, p.has = proto.Clone(req).(T), true
		}
		p.count++
		return zero, false, nil
	}
	p.count = 0
	if !p.has {
		return req, true, nil
	}
	whole := p.kept
	p.has = false
	proto.Merge(whole, req)
	m := whole.ProtoReflect()
	for _, name := range []string{"full_sync_continues", "full_sync_part"} {
		m.Clear(m.Descriptor().Fields().ByName(protoreflect.Name(name)))
	}
	return whole, true, nil
}
