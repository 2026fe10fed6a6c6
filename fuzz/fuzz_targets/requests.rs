//! Request validation of every RPC that takes input: the first byte picks the request type,
//! the rest is its protobuf encoding, as a caller on the socket could send it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netlet_sdk::proto as p;
use netlet_sdk::validate as v;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    let _ = match kind % 11 {
        0 => p::AttachPodRequest::decode(body).map(|r| v::attach_pod(&r).is_ok()),
        1 => p::DetachPodRequest::decode(body).map(|r| v::detach_pod(&r).is_ok()),
        2 => p::GarbageCollectRequest::decode(body).map(|r| v::garbage_collect(&r).is_ok()),
        3 => p::ProgramServiceRequest::decode(body).map(|r| v::program_service(&r).is_ok()),
        4 => p::ListServicesRequest::decode(body).map(|r| v::list_services(&r).is_ok()),
        5 => p::ApplyPolicyRequest::decode(body).map(|r| v::apply_policy(&r).is_ok()),
        6 => p::CheckDnsRequest::decode(body).map(|r| v::check_dns(&r).is_ok()),
        7 => p::CheckHostnameRequest::decode(body).map(|r| v::check_hostname(&r).is_ok()),
        8 => p::AllocateDeviceRequest::decode(body).map(|r| v::allocate_device(&r).is_ok()),
        9 => p::ReleaseDeviceRequest::decode(body).map(|r| v::release_device(&r).is_ok()),
        _ => p::ListAttachmentsRequest::decode(body).map(|r| v::list_attachments(&r).is_ok()),
    };
});
