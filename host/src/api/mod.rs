//! The gRPC services the host serves, one module per service. All are implemented on [`Api`],
//! a handle to the shared [`Host`](crate::Host).

mod cluster;
mod devices;
mod identity;
mod node;
mod pods;
pub(crate) mod policy;
pub(crate) mod services;

pub use crate::served::{HOST_CAPABILITIES, host_services};

use std::sync::{Arc, Mutex};

use futures::future::join_all;
use netlet_sdk::parts::{MAX_BATCH_BYTES, Splittable, split};
use netlet_sdk::proto::{ApplyPolicyRequest, ProgramServiceRequest};
use tonic::Status;

use crate::{Host, error, registry::DriverEntry};

/// The host's implementation of every `netlet.v1alpha1` service.
#[derive(Clone)]
pub struct Api(pub Arc<Host>);

/// ProgramService on a driver; its applied generation.
pub(crate) async fn program_service(
    d: Arc<DriverEntry>,
    r: ProgramServiceRequest,
) -> Result<u64, Status> {
    let resp = d.clients.services.clone().program_service(r).await?;
    Ok(resp.into_inner().applied_generation)
}

/// ApplyPolicy on a driver; its applied generation.
pub(crate) async fn apply_policy(
    d: Arc<DriverEntry>,
    r: ApplyPolicyRequest,
) -> Result<u64, Status> {
    let resp = d.clients.policy.clone().apply_policy(r).await?;
    Ok(resp.into_inner().applied_generation)
}

/// Sends one batch to a driver: as it is, or, when it is a full sync over 4 MiB, in parts one
/// after the other (the driver applies them as one at the last). Returns the driver's answer
/// to the last.
pub(crate) async fn send<Req, F, Fut>(
    d: &Arc<DriverEntry>,
    req: Req,
    call: &F,
) -> Result<u64, Status>
where
    Req: Splittable,
    F: Fn(Arc<DriverEntry>, Req) -> Fut,
    Fut: Future<Output = Result<u64, Status>>,
{
    send_parts(d, split(req, MAX_BATCH_BYTES), call).await
}

/// Sends the parts of one batch to a driver, one after the other, each made only when the one
/// before was answered; returns the driver's answer to the last.
pub(crate) async fn send_parts<Req, P, F, Fut>(
    d: &Arc<DriverEntry>,
    parts: P,
    call: &F,
) -> Result<u64, Status>
where
    P: IntoIterator<Item = Req>,
    F: Fn(Arc<DriverEntry>, Req) -> Fut,
    Fut: Future<Output = Result<u64, Status>>,
{
    let mut applied = 0;
    for part in parts {
        applied = call(d.clone(), part).await?;
    }
    Ok(applied)
}

/// Sends a generation-stamped batch to every driver in `drivers`: the delta to a driver that
/// applied `prev`, the full state to one that did not (restarted, or failed a delta). Records
/// each driver's applied generation; a failure resets it to 0 so the next batch is a full sync.
/// `full` gives the full state's parts (made as they are sent).
pub(crate) async fn sync_to_drivers<Req, P, F, Fut>(
    drivers: Vec<Arc<DriverEntry>>,
    generation_of: fn(&DriverEntry) -> &Mutex<u64>,
    prev: u64,
    applied: u64,
    delta: &Req,
    full: impl Fn() -> P,
    call: F,
) -> Result<(), Status>
where
    Req: Splittable,
    P: IntoIterator<Item = Req>,
    F: Fn(Arc<DriverEntry>, Req) -> Fut,
    Fut: Future<Output = Result<u64, Status>>,
{
    // A delta too large for one message goes as a full sync, which is sent in parts.
    let fits = delta.encoded_len() <= MAX_BATCH_BYTES;
    let calls = drivers.into_iter().map(|d| {
        let have = generation_of(&d).lock().map(|g| *g).unwrap_or(0);
        let stale = have != applied;
        let delta = (stale && have == prev && prev != 0 && fits).then(|| delta.clone());
        let (call, full) = (&call, &full);
        async move {
            let res = match delta {
                _ if !stale => Ok(applied),
                None => send_parts(&d, full(), call).await,
                Some(r) => match send(&d, r, call).await {
                    // A driver that refuses a delta (it restarted, or lost its state) gets the
                    // whole table at once (built only then): a full sync always applies.
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        tracing::info!(driver = %d.name, reason = %s.message(), "delta refused; sending a full sync");
                        send_parts(&d, full(), call).await
                    }
                    other => other,
                },
            };
            if let Ok(mut g) = generation_of(&d).lock() {
                *g = *res.as_ref().unwrap_or(&0);
            }
            res.map_err(|s| error::from_fanout(&d, s))
        }
    });
    let errors: Vec<Status> = join_all(calls)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match errors.as_slice() {
        [] => Ok(()),
        [one] => Err(one.clone()),
        many => Err(Status::new(
            many[0].code(),
            many.iter()
                .map(|s| s.message())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}
