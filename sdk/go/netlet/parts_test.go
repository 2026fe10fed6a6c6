package netlet

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "netlet.io/sdk/go/api/netlet/v1alpha1"
)

func part(i uint32, continues bool, names ...string) *pb.ProgramServiceRequest {
	r := &pb.ProgramServiceRequest{Epoch: 2, Generation: 5, FullSync: true, FullSyncPart: i, FullSyncContinues: continues}
	for _, n := range names {
		r.ServiceUpserts = append(r.ServiceUpserts, &pb.Service{Key: &pb.ServiceKey{Namespace: "ns", Name: n}})
	}
	return r
}

func TestPartsApplyAsOne(t *testing.T) {
	var p Parts[*pb.ProgramServiceRequest]
	for i, r := range []*pb.ProgramServiceRequest{part(0, true, "a", "b"), part(1, true, "c")} {
		if _, ok, err := p.Offer(r); ok || err != nil {
			t.Fatalf("part %d: ok=%v err=%v", i, ok, err)
		}
	}
	whole, ok, err := p.Offer(part(2, false, "d"))
	if !ok || err != nil {
		t.Fatalf("last part: ok=%v err=%v", ok, err)
	}
	var got []string
	for _, s := range whole.GetServiceUpserts() {
		got = append(got, s.GetKey().GetName())
	}
	if fmt.Sprint(got) != "[a b c d]" || whole.GetFullSyncContinues() || whole.GetFullSyncPart() != 0 ||
		whole.GetGeneration() != 5 || !whole.GetFullSync() {
		t.Fatalf("put together: %v", whole)
	}
	// A gap is refused, never applied as if whole.
	if _, _, err := p.Offer(part(1, true, "x")); status.Code(err) != codes.FailedPrecondition ||
		ErrorField(err) != "full_sync_part" {
		t.Fatalf("gap: %v", err)
	}
	// A batch sent whole passes through.
	if r, ok, err := p.Offer(part(0, false, "z")); !ok || err != nil || len(r.GetServiceUpserts()) != 1 {
		t.Fatalf("whole batch: %v %v %v", r, ok, err)
	}
}
