//! The gRPC services the host serves, one module per service. All are implemented on [`Api`],
//! a handle to the shared [`Host`](crate::Host).

mod devices;
mod identity;
mod node;
mod pods;
mod policy;
pub(crate) mod services;

pub use identity::{HOST_CAPABILITIES, host_services};

use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tonic::Status;

use crate::{Host, error, registry::DriverEntry};

/// The host's implementation of every `netlet.v1alpha1` service.
#[derive(Clone)]
pub struct Api(pub Arc<Host>);

/// Sends a generation-stamped batch to every driver in `drivers`: the delta to a driver that
/// applied `prev`, the full state to one that did not (restarted, or failed a delta). Records
/// each driver's applied generation; a failure resets it to 0 so the next batch is a full sync.
pub(crate) async fn sync_to_drivers<Req, F, Fut>(
    drivers: Vec<Arc<DriverEntry>>,
    generation_of: fn(&DriverEntry) -> &Mutex<u64>,
    prev: u64,
    applied: u64,
    delta: &Req,
    full: impl Fn() -> Req,
    call: F,
) -> Result<(), Status>
where
    Req: Clone,
    F: Fn(Arc<DriverEntry>, Req) -> Fut,
    Fut: Future<Output = Result<u64, Status>>,
{
    let calls = drivers.into_iter().map(|d| {
        let have = generation_of(&d).lock().map(|g| *g).unwrap_or(0);
        let delta = (have == prev && prev != 0).then(|| delta.clone());
        let req = (have != applied).then(|| delta.clone().unwrap_or_else(&full));
        let full = (have != applied && delta.is_some()).then(&full);
        let call = &call;
        async move {
            let res = match req {
                None => Ok(applied),
                Some(r) => match call(d.clone(), r).await {
                    // A driver that refuses a delta (it restarted, or lost its state) gets the
                    // whole table at once: a full sync always applies.
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => match full {
                        Some(f) => {
                            tracing::info!(driver = %d.name, reason = %s.message(), "delta refused; sending a full sync");
                            call(d.clone(), f).await
                        }
                        None => Err(s),
                    },
                    other => other,
                },
            };
            if let Ok(mut g) = generation_of(&d).lock() {
                *g = *res.as_ref().unwrap_or(&0);
            }
            res.map_err(|s| error::from_driver(&d, None, s))
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
